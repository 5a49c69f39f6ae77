"""`inat-zoo evaluate` error analysis: test-time augmentation beside the plain figures (recomputed independently with
timm and torchvision), the most-confused pairs and the top losses (as fastai's ClassificationInterpretation)."""

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision.transforms.functional as TF

import inat_zoo.evaluate as evaluate_module
from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.evaluate import evaluate
from inat_zoo.interpretation import most_confused

from .eval_helpers import (
    class_names,
    color_data_config,
    color_model,
    image_files,
    load_pil,
    make_run,
    pixel_std,
    write_color_folder,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


@pytest.fixture(scope="module")
def reference(run, sample_root):
    """timm's own model (local-dir) and evaluation transform, the val/ files, their PIL images and labels."""
    model = timm.create_model(f"local-dir:{run}/model", pretrained=True).eval()
    config = timm.data.resolve_model_data_config(model)
    files = image_files(sample_root, "val")
    return model, config, [load_pil(f) for f, _ in files], torch.tensor([label for _, label in files])


def _scores(mean_probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (nats) of averaged probabilities."""
    accuracy = (mean_probs.argmax(1) == labels).double().mean().item()
    loss = torch.nn.functional.nll_loss(mean_probs.double().log(), labels).item()
    return accuracy, loss


def test_tta_flip_is_reported_beside_unchanged_plain_figures(run, reference, tmp_path, capsys):
    assert main(["evaluate", str(run), "--tta", "flip", "--out", str(tmp_path / "tta")]) == 0
    assert "TTA (flip) accuracy" in capsys.readouterr().out
    with_tta = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    plain = evaluate(str(run), out_dir=tmp_path / "plain", progress=False)
    tta = with_tta.pop("tta")
    assert with_tta == {k: v for k, v in plain.items() if k != "out_dir"}  # the plain figures do not move

    model, config, images, labels = reference
    x = torch.stack([timm.data.create_transform(**config, is_training=False)(img) for img in images])
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    accuracy, loss = _scores(probs, labels)
    assert tta["mode"] == "flip" and tta["num_samples"] == 40
    assert tta["accuracy"] == pytest.approx(accuracy) and tta["loss"] == pytest.approx(loss, rel=1e-4)
    assert tta["loss"] != pytest.approx(plain["loss"], rel=1e-4)  # a real second view, not the plain logits
    assert "softmax" in tta["definition"]


def test_tta_multi_crop_is_the_five_crop_at_the_evaluation_resize(run, reference, tmp_path):
    metrics = evaluate(str(run), out_dir=tmp_path / "eval", progress=False, tta="multi-crop")
    model, config, images, labels = reference
    size = config["input_size"][-1]
    resize = timm.data.create_transform(**config, is_training=False).transforms[0]  # timm's own eval resize
    norm = timm.data.create_transform(**config, is_training=False).transforms[-1]
    probs = []
    with torch.no_grad():
        for img in images:
            crops = torch.stack([norm(TF.to_tensor(c)) for c in TF.five_crop(resize(img), [size, size])])
            probs.append(model(crops).softmax(1).mean(0))
    accuracy, loss = _scores(torch.stack(probs), labels)
    tta = metrics["tta"]
    assert tta["mode"] == "multi-crop" and tta["num_samples"] == 40
    assert tta["accuracy"] == pytest.approx(accuracy) and tta["loss"] == pytest.approx(loss, rel=1e-4)
    assert tta["loss"] != pytest.approx(metrics["loss"], rel=1e-4)


def test_tta_mistakes_are_one_line_and_write_nothing(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--tta", "rotate", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == "inat-zoo: error: unknown --tta mode 'rotate'; choose one of flip, multi-crop\n"
    root = write_color_folder(tmp_path / "colors")
    loaded = color_model()
    loaded.data_config = {**color_data_config(), "crop_mode": "border"}  # timm's pad-to-fit: no crop to replace
    with pytest.raises(UsageError, match="--tta multi-crop needs .* centre crop"):
        evaluate(loaded, data_root=root, out_dir=tmp_path / "b", progress=False, tta="multi-crop")
    with pytest.raises(UsageError, match="unknown --tta mode 'rotate'"):
        evaluate(color_model(), data_root=root, out_dir=tmp_path / "c", progress=False, tta="rotate")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_most_confused_is_fastais_off_diagonal_sorted_by_count():
    cm = [[5, 1, 3], [0, 4, 0], [2, 3, 1]]
    assert most_confused(cm, ["a", "b", "c"]) == [
        {"true": "a", "predicted": "c", "count": 3},
        {"true": "c", "predicted": "b", "count": 3},  # a tie keeps row-major order
        {"true": "c", "predicted": "a", "count": 2},
        {"true": "a", "predicted": "b", "count": 1},
    ]
    assert most_confused(cm, ["a", "b", "c"], min_val=3) == most_confused(cm, ["a", "b", "c"])[:2]
    assert most_confused([[2, 0], [0, 2]], ["a", "b"]) == []


def test_most_confused_and_top_losses_of_an_evaluation(run, reference, sample_root, tmp_path, monkeypatch):
    titles: dict[str, list[str]] = {}
    real = evaluate_module.save_figure

    def spy(fig, path, **kwargs):
        titles[Path(path).name] = [ax.get_title() for ax in fig.axes if ax.images]
        return real(fig, path, **kwargs)

    monkeypatch.setattr(evaluate_module, "save_figure", spy)
    metrics = evaluate(str(run), out_dir=tmp_path / "eval", progress=False)
    cm, names = metrics["confusion_matrix"], class_names(sample_root)
    pairs = metrics["most_confused"]
    wrong = metrics["num_samples"] - sum(cm[i][i] for i in range(len(cm)))
    assert wrong > 0 and sum(p["count"] for p in pairs) == wrong
    assert [p["count"] for p in pairs] == sorted((p["count"] for p in pairs), reverse=True)
    for p in pairs:
        assert p["true"] != p["predicted"] and cm[names.index(p["true"])][names.index(p["predicted"])] == p["count"]

    model, config, images, labels = reference  # per-image cross-entropy, independently
    x = torch.stack([timm.data.create_transform(**config, is_training=False)(img) for img in images])
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(x).double(), labels, reduction="none")
    files = [str(f) for f, _ in image_files(sample_root, "val")]
    worst = metrics["top_losses"]
    assert [e["image"] for e in worst] == [files[i] for i in losses.argsort(descending=True)[:9].tolist()]
    assert [e["loss"] for e in worst] == pytest.approx(losses.sort(descending=True).values[:9].tolist(), rel=1e-4)
    assert all(0 <= e["true_probability"] <= e["predicted_probability"] <= 1 for e in worst)
    shown = titles["top_losses.png"]
    assert len(shown) == 9
    for title, e in zip(shown, worst, strict=True):
        assert title.startswith(f"true: {e['true']} (") and f"pred: {e['predicted']} (" in title
        assert title.endswith(f"loss {e['loss']:.2f}")
    assert pixel_std(tmp_path / "eval" / "top_losses.png") > 10
