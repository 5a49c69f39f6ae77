"""The model card's numbers: every test number comes from one evaluation, and the card names it."""

from __future__ import annotations

import json
import logging

from inat_zoo import hub
from inat_zoo.model_card import build_model_card

from .test_hub import LABELS, _make_run

REPO_ID = "me/inat12k-tiny"


def _evaluation(accuracy: float, macro_f1: float, n: int = 40, **extra) -> dict:
    """A result in the shape the one evaluation writes (the fields the card reads)."""
    return {
        "num_samples": n,
        "accuracy": accuracy,
        "top5_accuracy": 0.9,
        "top_k": 5,
        "loss": 1.2345678,
        "macro_precision": 0.5,
        "macro_recall": 0.5,
        "macro_f1": macro_f1,
        "absent_classes": [],
        "class_names": LABELS,
        "evaluation": {"rule": "inat_zoo-eval-1", "precision": "float32", "batch_size": 64},
        "skipped": {},
        **extra,
    }


def _card(run):
    card = build_model_card(hub.read_run(run), REPO_ID, eval_images=["images/eval/confusion_matrix.png"])
    published = {r.metric_type: r.metric_value for r in card.data.eval_results}
    row = next(line for line in card.text.splitlines() if line.startswith("| test |"))
    return card, published, [c.strip() for c in row.strip("|").split("|")]


def _write(run, metrics_test=None, eval_metrics=None):
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics_test is not None:
        metrics["test"] = metrics_test
    (run / "metrics.json").write_text(json.dumps(metrics))
    if eval_metrics is not None:
        (run / "eval" / "metrics.json").write_text(json.dumps({"split": "test", **eval_metrics}))


def test_the_card_takes_accuracy_and_f1_from_the_same_evaluation(tmp_path, caplog):
    run, _ = _make_run(tmp_path / "run")
    # a run of this version: the trainer's test block is the full evaluation, eval/ agrees with it
    _write(run, _evaluation(0.775, 0.7612), _evaluation(0.775, 0.7612))
    card, published, cells = _card(run)
    assert published == {"accuracy": 0.775, "f1": 0.7612}
    source = "training's final test pass (`metrics.json`)"
    assert cells == ["test", "77.50%", "90.00% (top-5)", "76.12%", "1.2346", "40", source]
    assert "the evaluation of the test row" in card.text

    # eval/ from another evaluation (another data root, another device): the card keeps ONE source and says so
    _write(run, eval_metrics=_evaluation(0.7778, 0.70, n=45))
    with caplog.at_level(logging.WARNING, logger="inat_zoo.model_card"):
        card, published, cells = _card(run)
    assert published == {"accuracy": 0.775, "f1": 0.7612}  # never 0.775 with 0.70
    assert "is not the run's test result" in caplog.text
    assert "(accuracy 77.78% on 45 images)" in card.text and "the evaluation of the test row" not in card.text


def test_an_older_run_without_f1_in_its_test_block_publishes_the_evaluate_result_whole(tmp_path):
    """The issue's case: the trainer said 0.7712, evaluate said 0.7778 with its F1. The card must not pair them."""
    run, _ = _make_run(tmp_path / "run")
    _write(run, {"accuracy": 0.7712, "loss": 0.8, "num_samples": 153}, _evaluation(0.7778, 0.7501, n=153))
    card, published, cells = _card(run)
    assert published == {"accuracy": 0.7778, "f1": 0.7501}
    assert cells[1] == "77.78%" and cells[3] == "75.01%" and cells[6] == "`inat-zoo evaluate` (`eval_metrics.json`)"
    # and without eval/: the trainer's accuracy alone, no F1 from anywhere
    (run / "eval" / "metrics.json").unlink()
    card, published, cells = _card(run)
    assert published == {"accuracy": 0.7712} and cells[3] == "–"


def test_the_card_names_absent_classes_skipped_images_and_the_top_k(tmp_path):
    run, _ = _make_run(tmp_path / "run")
    block = _evaluation(1.0, 1.0, absent_classes=["synth_class9"], skipped={"val/x.jpg": "empty file (0 bytes)"})
    block.pop("top5_accuracy")
    block.update(top_k=2, top2_accuracy=1.0)
    _write(run, block, block)
    card, _, cells = _card(run)
    assert cells[2] == "100.00% (top-2)"
    assert "no test image of synth_class9" in card.text and "1 unreadable test image(s) were skipped" in card.text
    validation = next(line for line in card.text.splitlines() if line.startswith("| validation |"))
    assert "the training loop at epoch 2" in validation  # the validation number names its source too


def test_the_card_shows_tta_beside_the_plain_row_the_most_confused_pairs_and_the_top_losses(tmp_path):
    run, _ = _make_run(tmp_path / "run")
    pairs = [{"true": LABELS[i], "predicted": LABELS[i + 1], "count": 7 - i} for i in range(7)]
    tta = {"mode": "flip", "accuracy": 0.8, "top5_accuracy": 0.95, "top_k": 5, "macro_f1": 0.79, "loss": 0.9,
           "num_samples": 40}  # fmt: skip
    _write(run, _evaluation(0.775, 0.7612), _evaluation(0.775, 0.7612, tta=tta, most_confused=pairs))
    images = ["images/eval/confusion_matrix.png", "images/eval/top_losses.png", "images/eval/predictions_grid.png"]
    card = build_model_card(hub.read_run(run), REPO_ID, eval_images=images)
    lines = card.text.splitlines()
    test_row = next(i for i, line in enumerate(lines) if line.startswith("| test |"))
    cells = [c.strip() for c in lines[test_row + 1].strip("|").split("|")]
    assert cells[:6] == ["test, TTA (flip)", "80.00%", "95.00% (top-5)", "79.00%", "0.9", "40"]
    assert cells[6].startswith("`inat-zoo evaluate --tta flip` (`eval_metrics.json`)")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"accuracy": 0.775, "f1": 0.7612}
    table = [line for line in lines if line.startswith(f"| {LABELS[0]} |") or line.startswith("| True class |")]
    assert table[0] == "| True class | Predicted as | Images |" and table[1] == f"| {LABELS[0]} | {LABELS[1]} | 7 |"
    assert sum(1 for line in lines if line.count("|") == 4 and line.split("|")[3].strip().isdigit()) == 5
    assert "Every test number above but the TTA row (and in this card's metadata) comes from one" in card.text
    assert "![Top losses](images/eval/top_losses.png)" in card.text
    order = [card.text.index(f"![{title}]") for title in ("Confusion matrix", "Predictions", "Top losses")]
    assert order == sorted(order)

    _write(run, eval_metrics=_evaluation(0.775, 0.7612))  # an evaluation without TTA nor error analysis
    card = build_model_card(hub.read_run(run), REPO_ID)
    assert "TTA" not in card.text and "Most-confused" not in card.text
