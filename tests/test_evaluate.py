"""`inat-zoo evaluate`: metrics recomputed independently with timm, the confusion matrix, the 10x3 grid, files."""

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml

import inat_zoo.evaluate as evaluate_module
from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.evaluate import EvalData, EvalImages, compute_metrics, evaluate, evaluate_split, load_eval_data

from .eval_helpers import (
    class_names,
    color_model,
    image_files,
    load_pil,
    make_run,
    pixel_std,
    timm_eval_transform,
    unreadable_files,
    write_color_folder,
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
    assert metrics["top_k"] == 5 and metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0
    assert metrics["evaluation"]["precision"] == "float32" and metrics["evaluation"]["batch_size"] == 64
    assert metrics["skipped"] == {} and metrics["absent_classes"] == []

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
    assert m["top_k"] == 3 and m["top3_accuracy"] == 1.0 and "top5_accuracy" not in m
    p = [e["precision"] for e in m["per_class"]]
    r = [e["recall"] for e in m["per_class"]]
    assert p == pytest.approx([0.5, 2 / 3, 1.0]) and r == pytest.approx([0.5, 1.0, 0.5])
    f1 = [2 * a * b / (a + b) for a, b in zip(p, r, strict=True)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_the_top_k_field_is_named_for_its_k():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    m = compute_metrics(logits, torch.tensor([0, 1, 1]), ["a", "b"])
    assert m["top_k"] == 2 and m["top2_accuracy"] == 1.0 and m["accuracy"] == pytest.approx(2 / 3)
    assert not [k for k in m if k.startswith("top") and k != "top_k" and k != "top2_accuracy"]


def test_a_perfect_model_on_a_test_folder_missing_a_class_scores_macro_f1_one(tmp_path, caplog):
    """3 training classes, the test folder has 2: macro averages over the classes present, and a warning."""
    root = write_color_folder(tmp_path / "colors", test_classes=("a_red", "b_green"))
    with caplog.at_level(logging.WARNING, logger="inat_zoo.evaluate"):
        metrics = evaluate(color_model(), data_root=root, out_dir=tmp_path / "eval", progress=False)
    assert metrics["accuracy"] == 1.0 and metrics["num_samples"] == 10
    assert metrics["macro_f1"] == metrics["macro_precision"] == metrics["macro_recall"] == 1.0
    assert metrics["absent_classes"] == ["c_blue"]
    assert [(r["class"], r["support"], r["f1"]) for r in metrics["per_class"]] == [
        ("a_red", 5, 1.0),
        ("b_green", 5, 1.0),
        ("c_blue", 0, 0.0),
    ]
    assert metrics["confusion_matrix"][2] == [0, 0, 0]
    rows = list(csv.DictReader((tmp_path / "eval" / "per_class.csv").open()))
    assert [int(r["support"]) for r in rows] == [5, 5, 0]  # the absent class keeps its row
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "c_blue" in warned[0] and "macro averages are over the 2 classes" in warned[0]

    caplog.clear()  # with every class present: nothing to warn about, the same perfect scores
    root = write_color_folder(tmp_path / "all_colors")
    with caplog.at_level(logging.WARNING, logger="inat_zoo.evaluate"):
        metrics = evaluate(color_model(), data_root=root, out_dir=tmp_path / "eval_all", progress=False)
    assert metrics["macro_f1"] == 1.0 and metrics["absent_classes"] == [] and not caplog.records


def test_unreadable_images_met_during_the_evaluation_are_skipped_and_named(tmp_path, caplog):
    """Images that turn out unreadable while scoring (whatever the reason) are left out and named, never a crash."""
    root = write_color_folder(tmp_path / "colors")
    loaded = color_model()
    data = load_eval_data(loaded, root, "test")
    bad = unreadable_files(tmp_path / "bad")
    values = [data.images.value(i) for i in range(len(data.images))] + [str(p) for p in bad.values()]
    labels = data.labels + [0] * len(bad)
    images = EvalImages(values, loaded.data_config, labels, "test")
    with caplog.at_level(logging.WARNING, logger="inat_zoo.evaluate"):
        result = evaluate_split(loaded, EvalData(images, labels, data.class_names, root, "test"), progress=False)
    assert result.metrics["num_samples"] == 15 and result.metrics["accuracy"] == 1.0
    assert result.indices == list(range(15))
    skipped = result.metrics["skipped"]
    assert set(skipped) == {str(p) for p in bad.values()}
    assert skipped[str(bad["decompression bomb"])].startswith("too large to decode safely")
    assert skipped[str(bad["empty"])] == "empty file (0 bytes)"
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 4 unreadable image(s) of the test split" in message
    assert all(str(p) in message for p in bad.values())


def test_unreadable_files_in_the_data_folder_are_skipped_with_a_warning(run, sample_root, tmp_path, capsys, caplog):
    """`inat-zoo evaluate` on a folder holding broken files: they are named in a warning, the rest is scored."""
    root = tmp_path / "sample"
    shutil.copytree(sample_root, root)
    cls = class_names(sample_root)[0]
    bad = unreadable_files(root / "val" / cls)
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(run), "--data-root", str(root), "--out", str(tmp_path / "out")]) == 0
    assert "on 40 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_samples"] == 40
    text = caplog.text
    assert all(str(p) in text for p in bad.values()), text


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
