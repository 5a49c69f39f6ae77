"""`inat-zoo explain`: guided backprop is really guided on ReLU models and says so when it cannot be, Grad-CAM
covers the input, pictures are drawn headless and not blank, for FlexibleCNN and a timm ResNet."""

import logging
from pathlib import Path

import matplotlib.pyplot as plt
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

from .eval_helpers import make_run, pixel_std


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
        return real(fig, path, **kwargs)

    monkeypatch.setattr(explain_module, "save_figure", spy)
    return seen


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
    assert count == 10 and title.startswith("Guided backprop of 10 stages.4 (CONV5) neurons")
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
