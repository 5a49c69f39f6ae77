"""`inat-zoo explain`: guided backprop is really guided on ReLU models and says so when it cannot be, Grad-CAM
finds the evidence where it is, pictures are drawn headless and not blank, for FlexibleCNN and a timm ResNet."""

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import timm
import torch

import inat_zoo.explain as explain_module
from inat_zoo.cli import main
from inat_zoo.explain import (
    explain,
    first_conv,
    gradcam,
    last_conv_block,
    layer_output,
    neuron_attributions,
    non_relu_activations,
    top_neurons,
)

from .eval_helpers import COLORS, color_data_config, color_model, make_run, pixel_std, unreadable_files


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_root) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture
def figures(monkeypatch) -> dict:
    """Per saved file: (number of image axes, suptitle) of the figure, inspected just before it is written."""
    seen: dict[str, tuple[int, str]] = {}
    real = explain_module.save_figure

    def spy(fig, path, **kwargs):
        axes = [ax for ax in fig.axes if ax.images]
        title = " ".join(fig._suptitle.get_text().split()) if fig._suptitle else ""
        seen[Path(path).name] = (len(axes), title)
        seen[f"axes:{Path(path).name}"] = axes  # in drawing order: titles and the arrays shown
        return real(fig, path, **kwargs)

    monkeypatch.setattr(explain_module, "save_figure", spy)
    return seen


def _titles(axes) -> list[str]:
    return [ax.get_title() for ax in axes]


def test_explain_flexible_cnn(runs, sample_root, figures, caplog):
    run = make_run(runs, sample_root, filters=[8, 8, 16, 16, 16])
    with caplog.at_level(logging.WARNING, logger="inat_zoo.explain"):
        paths = explain(str(run), images=4)
    assert not [r for r in caplog.records if "guided backprop" in r.getMessage()]
    assert set(paths) == {"filters", "guided_backprop", "gradcam"}
    assert all(p.parent == run / "explain" for p in paths.values())
    for path in paths.values():
        assert pixel_std(path) > 10, path
    count, title = figures["guided_backprop.png"]
    assert count == 11 and title.startswith("Guided backprop of 10 stages.4 (CONV5) neurons")
    # the input first (spanning the grid's rows, with its labels), then ten neurons, each titled
    axes = figures["axes:guided_backprop.png"]
    assert _titles(axes)[0].startswith("input\ntrue: ") and "\npred: " in _titles(axes)[0]
    assert all(t.startswith("stages.4 channel ") and "unit at (" in t for t in _titles(axes)[1:])
    rows = {round(ax.get_position().y0, 3) for ax in axes[1:]}
    cols = {round(ax.get_position().x0, 3) for ax in axes[1:]}
    assert len(rows) == 2 and len(cols) == 5  # a 2x5 grid of neurons
    assert axes[0].get_position().height > 1.5 * axes[1].get_position().height
    assert figures["gradcam.png"][0] == 4
    # mosaics of the 8 first-layer filters and of their 8 activation maps, and the input between them
    assert figures["filters.png"][0] == 3
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_guided_backprop_differs_from_the_gradient_on_relu_models():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, pretrained=False).eval()
    layer = last_conv_block(model)
    assert layer == "layer4" and first_conv(model)[0] == "conv1"
    assert non_relu_activations(model, layer) == []
    x = torch.randn(1, 3, 64, 64)
    neurons = top_neurons(layer_output(model, layer, x), 10)
    assert len(neurons) == 10 and len({c for c, _, _ in neurons}) == 10  # 512 channels: ten different ones
    guided = neuron_attributions(model, layer, x, neurons, guided=True)
    plain = neuron_attributions(model, layer, x, neurons, guided=False)
    assert guided.shape == plain.shape == (10, 3, 64, 64)
    assert guided.abs().sum() > 0
    assert not torch.allclose(guided, plain, atol=1e-6)
    # each copy of the image explains its own neuron: the first one equals a single-neuron run
    single = neuron_attributions(model, layer, x, neurons[:1], guided=True)
    assert torch.allclose(single[0], guided[0], atol=1e-6)

    cam = gradcam(model, layer, torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2]))
    assert cam.shape == (3, 1, 64, 64) and (cam >= 0).all()


def test_gelu_model_warns_and_says_plain_gradients(runs, sample_root, figures, caplog):
    run = make_run(runs, sample_root, steps=2, filters=8, act_layer="gelu")
    model = timm.create_model(f"local-dir:{run}/model", pretrained=True).eval()
    layer = last_conv_block(model)
    assert layer == "stages.4" and non_relu_activations(model, layer) == ["GELU"]
    x = torch.randn(1, 3, 64, 64)
    neurons = top_neurons(layer_output(model, layer, x), 3)
    # the reason for the warning: Captum's guided backprop is then just the gradient
    assert torch.allclose(
        neuron_attributions(model, layer, x, neurons, guided=True),
        neuron_attributions(model, layer, x, neurons, guided=False),
    )
    with caplog.at_level(logging.WARNING, logger="inat_zoo.explain"):
        paths = explain(str(run), images=2, integrated=True)
    assert pixel_std(paths["integrated_gradients"]) > 10
    assert figures["integrated_gradients.png"][0] == 2
    assert any("needs nn.ReLU" in r.getMessage() and "GELU" in r.getMessage() for r in caplog.records)
    assert figures["guided_backprop.png"][1].startswith("Plain gradients, NOT guided")
    assert figures["gradcam.png"][0] == 2


def test_explain_resnet_run_via_cli(runs, sample_root, tmp_path, capsys):
    run = make_run(runs, sample_root, model_name="resnet18", steps=1)
    out = tmp_path / "resnet_explain"
    assert main(["explain", str(run), "--images", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = {"filters.png", "guided_backprop.png", "gradcam.png"}
    assert {Path(p).name for p in printed} == names
    for name in names:
        assert pixel_std(out / name) > 10
    assert not (run / "explain").exists()
    assert main(["explain", str(run), "--images", "0"]) == 2


def _square_image(path: Path, color: tuple[int, int, int], size: int = 64, side: int = 24) -> Path:
    """A black picture with a coloured square in its top-left corner: the only evidence of the colour's class."""
    from PIL import Image

    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:side, :side] = color
    Image.fromarray(pixels).save(path)
    return path


def test_gradcam_is_where_the_evidence_is():
    """A model whose evidence is known: channel 0 reads bright pixels (class 0), channel 1 dark ones (class 1)."""
    torch.manual_seed(0)

    class Evidence(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU())
            with torch.no_grad():
                self.features[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]).view(2, 3, 1, 1))
                self.features[0].bias.copy_(torch.tensor([0.0, 1.0]))

        def forward(self, x):
            return self.features(x).mean((2, 3))

    model = Evidence().eval()
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, :16, :16] = 1.0  # bright square top-left, dark elsewhere
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[:16, :16] = True
    bright = gradcam(model, "features", x, torch.tensor([0]))[0, 0]
    dark = gradcam(model, "features", x, torch.tensor([1]))[0, 0]
    assert bright.shape == dark.shape == (64, 64)
    assert bright.max() > 0 and dark.max() > 0
    assert bright[inside].min() > 0 and bright[~inside].abs().max() == 0  # exactly on the square
    assert dark[~inside].min() > 0 and dark[inside].abs().max() == 0  # exactly off it
    # several images at once: each map follows its own image
    both = gradcam(model, "features", torch.cat([x, x.flip(-1)]), torch.tensor([0, 0]))
    assert torch.equal(both[1, 0], bright.flip(-1))


def test_explain_pictures_show_the_evidence_for_images_named_on_the_command_line(tmp_path, figures):
    """`explain --image`: the predicted labels come from the evaluation rule, Grad-CAM lights up the square."""
    red = _square_image(tmp_path / "red.png", COLORS["a_red"])
    blue = _square_image(tmp_path / "blue.png", COLORS["c_blue"])
    paths = explain(color_model(), image_files=[red, blue], out_dir=tmp_path / "out")
    assert set(paths) == {"filters", "guided_backprop", "gradcam"}
    axes = figures["axes:gradcam.png"]
    assert [t.split(" (")[0] for t in _titles(axes)] == ["pred: a_red", "pred: c_blue"]  # no truth: no colours
    size = color_data_config()["input_size"][-1]
    square = np.zeros((size, size), dtype=bool)
    square[: size * 24 // 64, : size * 24 // 64] = True
    for ax in axes:
        heat = np.asarray(ax.images[1].get_array(), dtype=float)  # the Grad-CAM overlay drawn over the image
        assert heat.shape == (size, size) and heat.max() > 0, "an empty Grad-CAM overlay"
        assert heat[square].sum() > 0.9 * heat.sum(), "Grad-CAM is not on the evidence"
    assert figures["axes:guided_backprop.png"][0].get_title().startswith("input\npred: a_red")


def test_explain_of_your_own_images_never_replaces_the_runs_pictures(runs, sample_root, tmp_path, figures):
    """`explain RUN --image` writes <run>/explain_images/, which push does not publish; <run>/explain/ (test
    images) stays as it was. A one-image figure wraps its title instead of clipping it."""
    run = make_run(runs, sample_root, filters=8)
    explain(str(run), images=2)
    before = {p.name: p.read_bytes() for p in (run / "explain").iterdir()}
    photo = _square_image(tmp_path / "photo.png", COLORS["a_red"])
    paths = explain(str(run), image_files=[photo])
    assert {p.parent for p in paths.values()} == {run / "explain_images"}
    assert {p.name: p.read_bytes() for p in (run / "explain").iterdir()} == before
    title = figures["gradcam.png"][1]
    assert title.startswith("Grad-CAM of") and title.endswith("predicted class")  # the whole title, wrapped


def test_explain_image_that_cannot_be_read_is_one_line(runs, sample_root, tmp_path, capsys):
    run = make_run(runs, sample_root, filters=8)
    for kind, path in {**unreadable_files(tmp_path / "bad"), "missing": tmp_path / "missing.png"}.items():
        assert main(["explain", str(run), "--image", str(path), "--out", str(tmp_path / "out")]) == 2, kind
        err = capsys.readouterr().err
        assert err.startswith(f"inat-zoo: error: {path}: ") and err.count("\n") == 1, (kind, err)
    assert not (tmp_path / "out").exists()


def test_explain_labels_are_the_evaluations_predictions(runs, sample_root, figures):
    """The true/pred labels on the Grad-CAM picture are what `inat-zoo evaluate` predicts for those images."""
    from inat_zoo.evaluate import evaluate_split, load_eval_data
    from inat_zoo.loading import load_model

    run = make_run(runs, sample_root, filters=8)
    explain(str(run), images=10)
    loaded = load_model(str(run))
    data = load_eval_data(loaded, None, "test")
    evaluation = evaluate_split(loaded, data, progress=False)
    probs = evaluation.logits.softmax(1)
    firsts = [data.labels.index(c) for c in range(10)]  # explain takes one image per class, round-robin
    expected = [
        f"true: {data.class_names[data.labels[i]]}\npred: {data.class_names[int(probs[i].argmax())]} "
        f"({float(probs[i].max()):.0%})"
        for i in firsts
    ]
    assert _titles(figures["axes:gradcam.png"]) == expected
