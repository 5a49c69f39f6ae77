"""One model, one test result: what a user runs (train the shipped demo recipe, `inat-zoo evaluate`, `inat-zoo push
--dry-run`) reports the same test numbers everywhere, to the last digit, and the card's F1 is that evaluation's.

The recipe keeps its own defaults (DataLoader workers on, augmentation on, the prepared cache as the recipe sets it);
only the size is cut down. A second run turns the prepared cache on: the training loop then reads resized copies,
while the test numbers must still come from the original files.
"""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from inat_zoo.cli import main
from inat_zoo.hub import shareable_eval_metrics

from .train_helpers import REPO

SMALL = ["train.epochs=2", "data.image_size=32", "model.args.filters=8", "train.batch_size=16"]


@pytest.mark.parametrize("extra", [[], ["data.prepared_cache=true"]], ids=["demo-recipe", "prepared-cache"])
def test_train_evaluate_and_card_report_one_test_result(sample_root, tmp_path, capsys, extra):
    run = tmp_path / "run"
    argv = ["train", str(REPO / "recipes" / "demo.yaml"), f"data.root={sample_root}", f"output_dir={run}"]
    assert main([*argv, *SMALL, *extra]) == 0
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["data"]["num_workers"] == 2 and recipe["data"]["augment"]["scale"] == [0.5, 1.0]  # as shipped
    assert recipe["data"]["prepared_cache"] is bool(extra)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["num_samples"] == 40 and 0 < test["accuracy"] < 1
    assert test["top_k"] == 5 and test["evaluation"]["precision"] == "float32"

    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads((run / "eval" / "metrics.json").read_text())
    # every field of the trainer's test block, exactly: the same evaluation
    assert {key: evaluated[key] for key in test} == test
    assert f"accuracy {test['accuracy']:.4f}" in printed and f"macro F1 {test['macro_f1']:.4f}" in printed

    hub = tmp_path / "hub"
    assert main(["push", str(run), "--repo-id", "me/inat-demo", "--dry-run", str(hub)]) == 0
    card = ModelCard.load(hub / "README.md")
    published = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert published == {"accuracy": test["accuracy"], "f1": test["macro_f1"]}
    row = next(line for line in card.text.splitlines() if line.startswith("| test |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * test['accuracy']:.2f}%" and cells[3] == f"{100 * test['macro_f1']:.2f}%"
    assert cells[5] == "40" and cells[6] == "training's final test pass (`metrics.json`)"
    assert "comes from one evaluation, training's final test pass" in card.text
    assert json.loads((hub / "metrics.json").read_text())["test"] == test
    shared = json.loads((hub / "eval_metrics.json").read_text())  # evaluate's figures, its local paths cut
    assert shared == shareable_eval_metrics(evaluated) and {key: shared[key] for key in test} == test
    pictures = f"(accuracy {100 * test['accuracy']:.2f}% on 40 images: the evaluation of the test row)"
    assert pictures in card.text  # the confusion matrix and prediction grid name their evaluation
