"""`inat-zoo evaluate`: metrics recomputed independently with timm, the confusion matrix, the 10x3 grid, files."""

import csv
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml

import inat_zoo.evaluate as evaluate_module
from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.evaluate import compute_metrics, evaluate

from .eval_helpers import (
    class_names,
    image_files,
    load_pil,
    make_run,
    pixel_std,
    timm_eval_transform,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


@pytest.fixture
def figures(monkeypatch) -> dict:
    """Every figure evaluate saves, inspected just before it is written: per file, its image axes."""
    seen: dict[str, list] = {}
    real = evaluate_module.save_figure

    def spy(fig, path, **kwargs):
        seen[Path(path).name] = [
            (ax.get_title(), ax.title.get_color()) for ax in fig.axes if ax.images and ax.get_visible()
        ]
        return real(fig, path, **kwargs)

    monkeypatch.setattr(evaluate_module, "save_figure", spy)
    return seen


def test_evaluate_matches_an_independent_timm_count(run, sample_root, figures):
    metrics = evaluate(str(run), progress=False)  # data root from the run's recipe.yaml
    out = run / "eval"
    assert metrics["out_dir"] == str(out)
    assert json.loads((out / "metrics.json").read_text()) == {k: v for k, v in metrics.items() if k != "out_dir"}

    # independent recomputation: timm's own local-dir loader and eval transform over the val/ files
    model = timm.create_model(f"local-dir:{run}/model", pretrained=True).eval()
    transform = timm_eval_transform(timm.data.resolve_model_data_config(model))
    files = image_files(sample_root, "val")
    with torch.no_grad():
        preds = model(torch.stack([transform(load_pil(f)) for f, _ in files])).argmax(1).tolist()
    names = class_names(sample_root)
    cm = [[0] * len(names) for _ in names]
    for (_, label), pred in zip(files, preds, strict=True):
        cm[label][pred] += 1
    correct = sum(cm[i][i] for i in range(len(names)))
    assert 0 < correct < len(files), "the tiny run should be neither useless nor perfect"
    assert metrics["num_samples"] == len(files) == 40
    assert metrics["accuracy"] == pytest.approx(correct / len(files))
    assert metrics["confusion_matrix"] == cm
    assert sum(map(sum, metrics["confusion_matrix"])) == 40
    assert metrics["class_names"] == names and metrics["split"] == "test"
    assert metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == names
    assert [int(r["support"]) for r in rows] == [4] * 10
    for row, entry in zip(rows, metrics["per_class"], strict=True):
        assert float(row["f1"]) == pytest.approx(entry["f1"])
    assert metrics["macro_f1"] == pytest.approx(sum(e["f1"] for e in metrics["per_class"]) / 10)

    # the grid: 10 rows x 3 images, titles name the true class of the row; wrong ones (and only those) in red
    grid = figures["predictions_grid.png"]
    assert len(grid) == 30
    wrong = 0
    for i, (title, color) in enumerate(grid):
        assert title.startswith(f"true: {names[i // 3]}\npred: ")
        is_wrong = title.split("\n")[1].split(" (")[0] != f"pred: {names[i // 3]}"
        wrong += is_wrong
        assert (color == evaluate_module.WRONG) == is_wrong
    assert 0 < wrong < 30
    for name in ("confusion_matrix.png", "predictions_grid.png"):
        assert pixel_std(out / name) > 10


def test_compute_metrics_on_a_known_case():
    # 3 classes; truth [0,0,1,1,2,2], predictions [0,1,1,1,0,2]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 2]), 3).float() * 5
    m = compute_metrics(logits, labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top_k"] == 3 and m["top5_accuracy"] == 1.0
    p = [e["precision"] for e in m["per_class"]]
    r = [e["recall"] for e in m["per_class"]]
    assert p == pytest.approx([0.5, 2 / 3, 1.0]) and r == pytest.approx([0.5, 1.0, 0.5])
    f1 = [2 * a * b / (a + b) for a, b in zip(p, r, strict=True)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_validation_split_uses_the_run_recipe(run):
    metrics = evaluate(str(run), split="validation", progress=False)
    assert metrics["split"] == "validation" and metrics["out_dir"] == str(run / "eval_validation")
    assert metrics["num_samples"] == 24  # 20% of 12 train images x 10 classes, as the run held out
    assert sum(map(sum, metrics["confusion_matrix"])) == 24
    assert json.loads((run / "eval_validation" / "metrics.json").read_text())["num_samples"] == 24


def test_class_count_mismatch_is_a_usage_error(tmp_path, sample_root):
    from inat_zoo.export import save_model_folder

    model = timm.create_model("inat_flexible_cnn", num_classes=3, filters=4, pretrained=False)
    save_model_folder(model, tmp_path / "m", label_names=["a", "b", "c"], data_config={"input_size": (3, 32, 32)})
    with pytest.raises(UsageError, match="predicts 3 classes but .* has 10"):
        evaluate(f"local-dir:{tmp_path / 'm'}", data_root=sample_root, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inat-zoo: error:") and "--data-root" in err and "\n" not in err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["evaluate", str(run), "--out", str(foreign)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["evaluate", str(run), "--num-workers", "-1"]) == 2
    assert "--num-workers must be 0 or more" in capsys.readouterr().err


def test_wandb_offline_logging(run, tmp_path, monkeypatch, sample_root):
    """With track.wandb the evaluation is also logged to an offline W&B run (no network, no login)."""
    wandb_run = tmp_path / "wandb_run"
    wandb_run.mkdir()
    (wandb_run / "model").symlink_to(run / "model")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["track"] = {"wandb": True, "project": "inat_zoo_test", "mode": "offline"}
    (wandb_run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.delenv("WANDB_MODE")  # conftest disables W&B; here the recipe's offline mode applies
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["evaluate", str(wandb_run)]) == 0
    runs = list((wandb_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    assert list(media.glob("images/test/predictions_grid_*.png"))
    assert list(media.glob("table/test/confusion_matrix_table_*.table.json"))
    table = json.loads(next(media.glob("table/test/per_class_*.table.json")).read_text())
    assert [row[0] for row in table["data"]] == class_names(sample_root)
