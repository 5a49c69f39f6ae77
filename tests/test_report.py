"""`inat-zoo report` on hand-made run directories (the run-directory contract), no training needed.

The sweep test (tests/test_sweep.py) covers a report of real trial runs from an Optuna sweep.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from PIL import Image

from inat_zoo.cli import main
from inat_zoo.config import DEFAULTS, validate_recipe
from inat_zoo.report import MIN_TRIALS_FOR_IMPORTANCE, collect, correlations, find_runs, markdown_table
from inat_zoo.sweep import SWEEP_RECORD, open_study


def make_run(
    path, *, lr, act, freeze="none", val_acc, test_acc, epochs=3, ran=None, complete=True, augment=None, stop=None
):
    """A run directory in the trainer's layout: resolved recipe.yaml, history.jsonl and (if complete) metrics.json;
    ``stop``: the epoch early stopping ended it at (metrics.json's ``early_stopping`` block)."""
    recipe = validate_recipe(
        {
            "output_dir": str(path),
            "model": {"name": "resnet18", "args": {"act_layer": act}, "freeze": freeze},
            "data": {"root": "/data/inat", "augment": augment or {}},
            "train": {"lr": lr, "epochs": epochs},
        }
    )
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    ran = epochs if ran is None else ran
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_accuracy": val_acc * e / epochs,
            "val_loss": 2.1 / e,
            "val_accuracy": val_acc * e / ran,
            "lr": lr,
            "epoch_time_s": 1.5,
        }
        for e in range(1, ran + 1)
    ]
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if complete:
        metrics = {
            "model": "resnet18",
            "freeze": freeze,
            "params": 11_181_642,
            "trainable_params": 5_130 if freeze == "head" else 11_181_642,
            "best_epoch": epochs,
            "epochs": epochs,
            "validation": {"accuracy": val_acc, "loss": 0.7, "num_samples": 2000},
            "test": {"accuracy": test_acc, "loss": 0.8, "num_samples": 2000},
            "world_size": 1,
            "train_time_s": 1.5 * epochs,
            "images_per_s": 100.0,
        }
        if stop is not None:
            reason = "val_loss did not improve by 0.001 for 1 epochs"
            metrics["early_stopping"] = {"stopped_epoch": stop, "best_epoch": stop - 1, "metric": "val_loss",
                                         "reason": reason}  # fmt: skip
            metrics["epochs"] = stop
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # accuracy rises with lr; the activation does not matter; one run was stopped after 2 epochs
    make_run(root / "lr_low", lr=1e-4, act="relu", val_acc=0.40, test_acc=0.38)
    make_run(root / "lr_mid", lr=1e-3, act="gelu", freeze="head", val_acc=0.55, test_acc=0.52)
    make_run(root / "lr_high", lr=3e-3, act="relu", val_acc=0.61, test_acc=0.60, augment={"hflip": 0.0})
    make_run(root / "stopped", lr=5e-4, act="gelu", val_acc=0.50, test_acc=None, ran=2, complete=False)
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("ignored")
    (root / ".hidden_tmp").mkdir()
    (root / ".hidden_tmp" / "recipe.yaml").write_text("{}")
    return root


def test_find_runs_skips_non_runs_and_sorts_naturally(tmp_path):
    for i in (10, 2, 1):
        make_run(tmp_path / f"trial_{i}", lr=1e-3, act="relu", val_acc=0.5, test_acc=0.5)
    (tmp_path / "trial_3").mkdir()  # started, nothing written yet
    names = [name for name, _ in find_runs([tmp_path])]
    assert names == ["trial_1", "trial_2", "trial_10"]
    assert [name for name, _ in find_runs([tmp_path / "trial_2"])] == ["trial_2"]


def test_rows_varying_columns_and_incomplete_runs(runs):
    rows, varying, study = collect([runs])
    assert study is None
    assert [r["name"] for r in rows] == ["lr_high", "lr_mid", "stopped", "lr_low"]  # by best validation accuracy
    # only keys that differ between the runs; model.freeze has its own column, output_dir/track never count
    assert set(varying) == {"train.lr", "model.args.act_layer", "data.augment.hflip"}
    by = {r["name"]: r for r in rows}
    assert by["lr_mid"]["freeze"] == "head" and by["lr_mid"]["trainable_params"] == 5_130
    assert by["stopped"]["status"] == "incomplete"
    assert by["stopped"]["best_val_acc"] == pytest.approx(0.50)  # from history.jsonl
    assert by["stopped"]["test_acc"] is None and by["stopped"]["epochs"] == 2
    assert by["lr_high"]["status"] == "complete" and by["lr_high"]["train_time_s"] == pytest.approx(4.5)
    table = markdown_table(rows, varying).splitlines()
    assert table[0].startswith("| run | status | model | freeze |") and "best val acc | test acc" in table[0]
    assert "| lr_high | complete | resnet18 | none |" in table[2] and "61.00%" in table[2] and "60.00%" in table[2]
    assert table[3].startswith("| lr_mid | complete | resnet18 | head |") and "5.13k trained" in table[3]
    assert len(table) == 2 + 4


def test_a_run_early_stopping_ended_is_shown_as_stopped_early(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "early", lr=1e-3, act="relu", val_acc=0.5, test_acc=0.45, epochs=10, ran=4, stop=4)
    make_run(root / "all", lr=3e-3, act="relu", val_acc=0.6, test_acc=0.55)
    by = {r["name"]: r for r in collect([root])[0]}
    assert by["early"]["status"] == "stopped early (epoch 4)" and by["all"]["status"] == "complete"
    assert main(["report", str(root), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "| early | stopped early (epoch 4) | resnet18 | none |" in printed and "| all | complete |" in printed
    assert "2 runs from" in (md := (tmp_path / "report" / "report.md").read_text()) and "(2 finished)" in md


def test_correlation_follows_the_data(runs):
    rows, varying, _ = collect([runs])
    scores = correlations(rows, varying)
    assert scores["train.lr"] == pytest.approx(1.0)  # rank correlation: accuracy rises with lr in every run
    act = scores["model.args.act_layer"]
    assert 0.0 <= act < 0.5  # eta: relu (0.40, 0.61) vs gelu (0.55, 0.50) explains little of the variance


def test_report_cli_writes_table_csv_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| lr_high | complete |" in printed and "train.lr" in printed
    md = (out / "report.md").read_text()
    assert "4 runs" in md and "(3 finished)" in md and "| lr_low | complete |" in md
    assert "Method: correlation with best validation accuracy" in md and "| train.lr | 1.000 |" in md
    with open(out / "report.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [r["name"] for r in records] == ["lr_high", "lr_mid", "stopped", "lr_low"]
    assert float(records[0]["best_val_acc"]) == pytest.approx(0.61) and float(records[0]["train.lr"]) == 0.003
    assert records[2]["test_acc"] == "" and records[2]["status"] == "incomplete"
    for name in ("accuracy.png", "parallel_coordinates.png", "importance.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 100
            assert len(img.getcolors(1 << 20) or []) > 10  # drawn, not blank
    # running again replaces the earlier report; a user's folder is never replaced
    assert main(["report", str(runs), "--out", str(out)]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert main(["report", str(runs), "--out", str(mine)]) == 2
    assert "is not an earlier report" in capsys.readouterr().err
    assert (mine / "keep.txt").read_text() == "x"


def test_sweep_folder_uses_the_study(tmp_path):
    """Trial states and, with enough trials, Optuna's importance come from the sweep folder's journal."""
    import optuna

    out = tmp_path / "sweep"
    space = {
        "train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "model.args.act_layer": {"distribution": "categorical", "values": ["relu", "gelu"]},
    }
    dists = {
        "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "model.args.act_layer": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
    }
    out.mkdir()
    (out / SWEEP_RECORD).write_text(yaml.safe_dump({"name": "s", "parameters": space}, sort_keys=False))
    study = open_study(out, "s", direction="maximize")
    n = MIN_TRIALS_FOR_IMPORTANCE
    for i in range(n + 1):
        lr, act = 1e-4 * 100 ** (i / n), ("relu", "gelu")[i % 2]
        acc = 0.3 + 0.3 * i / n + (0.01 if act == "relu" else 0.0)  # lr matters, the activation barely
        pruned = i == n
        make_run(out / f"trial_{i}", lr=lr, act=act, val_acc=acc, test_acc=acc, complete=not pruned, ran=1)
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.lr": lr, "model.args.act_layer": act},
                distributions=dists,
                value=None if pruned else acc,
                intermediate_values={1: acc},
                user_attrs={"run_dir": f"trial_{i}"},
                state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
            )
        )
    result = write_report_for(out)
    by = {r["name"]: r for r in result["rows"]}
    assert by["trial_3"]["trial"] == 3 and by["trial_3"]["status"] == "complete"
    assert by[f"trial_{n}"]["status"] == "pruned" and by[f"trial_{n}"]["test_acc"] is None
    assert result["varying"] == ["train.lr", "model.args.act_layer"]  # the sweep's order
    assert result["method"].startswith("optuna parameter importance")
    scores = result["importance"]
    assert set(scores) == {"train.lr", "model.args.act_layer"} and scores["train.lr"] > scores["model.args.act_layer"]


def write_report_for(path):
    from inat_zoo.report import write_report

    return write_report([path], path / "report")


def test_report_errors_are_usage_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_defaults_match_the_recipe_schema():
    # the report hides these keys; if the trainer renames them this test says so
    assert {"output_dir", "resume", "track"} <= set(DEFAULTS)
    assert "num_workers" in DEFAULTS["data"] and "eval_batch_size" in DEFAULTS["train"]
