"""`inat-zoo lr-find`: the learning-rate range test (Smith 2017) of a recipe on the tiny sample, as a user runs it."""

import json
import math

import pytest

from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.lr_find import BETA, MIN_POINTS, check_settings, exponential_lrs, suggest_lr

from .eval_helpers import pixel_std
from .train_helpers import tiny_recipe, write_recipe


@pytest.fixture
def recipe(sample_root, tmp_path):
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe(sample_root, tmp_path / "runs" / "tiny"))


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_lr_find_writes_its_curve_and_a_suggestion_and_nothing_else(recipe, tmp_path, capsys):
    before = _files(tmp_path)
    out = tmp_path / "lr"
    args = ["lr-find", str(recipe), "train.batch_size=8", "--out", str(out), "--num-iter", "12", "--start-lr", "1e-5"]
    assert main([*args, "--end-lr", "1"]) == 0
    assert capsys.readouterr().out.startswith("suggested lr ")
    assert _files(tmp_path) == sorted([*before, "lr", "lr/lr_find.json", "lr/lr_find.png"])  # no run dir, no weights
    result = json.loads((out / "lr_find.json").read_text())
    lr, curve = result["suggested_lr"], result["curve"]
    assert math.isfinite(lr) and 1e-5 <= lr <= 1 and lr in curve["lr"]
    assert result["rule"]["name"] == "steep" and result["batch_size"] == 8 and result["optimizer"] == "adamw"
    assert curve["lr"] == pytest.approx(exponential_lrs(1e-5, 1, 12)[: len(curve["lr"])])
    assert curve["lr"][0] == pytest.approx(1e-5)
    assert result["iterations"] == len(curve["loss"]) == len(curve["raw_loss"])
    average = 0.0  # the smoothed loss is fastai's bias-corrected EMA of the raw losses
    for i, (raw, smooth) in enumerate(zip(curve["raw_loss"], curve["loss"], strict=True)):
        average = BETA * average + (1 - BETA) * raw
        assert smooth == pytest.approx(average / (1 - BETA ** (i + 1)))
    assert len(set(curve["raw_loss"])) > 1  # the weights really changed between mini-batches
    assert pixel_std(out / "lr_find.png") > 10


def test_a_diverging_sweep_stops_at_four_times_the_best_loss(recipe, tmp_path):
    out = tmp_path / "lr"
    args = ["lr-find", str(recipe), "--out", str(out), "--num-iter", "30", "--start-lr", "1e-3", "--end-lr", "1e6"]
    assert main(args) == 0
    result = json.loads((out / "lr_find.json").read_text())
    losses = result["curve"]["loss"]
    assert result["diverged"] and result["iterations"] < 30
    assert not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses[:-1])
    assert all(loss <= 4 * min(losses[: i + 1]) for i, loss in enumerate(losses[:-1]))


def test_the_steep_rule_picks_the_fastest_fall_over_log_lr():
    lrs = exponential_lrs(1e-6, 1, 40)
    # a loss falling fastest at lr = 1e-3 (index 19.5 of 40 in log space), flat before, rising at the end
    losses = [2 - math.tanh(2 * (math.log10(lr) + 3)) + (5 if i > 36 else 0) for i, lr in enumerate(lrs)]
    lr, index = suggest_lr(lrs, losses)
    assert index in (19, 20) and lr == lrs[index]
    with pytest.raises(UsageError, match="diverged after 2 mini-batch"):
        suggest_lr(lrs[:2], losses[:2])


def test_lr_find_mistakes_are_one_line_and_write_nothing(recipe, tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["lr-find", str(recipe), "--out", str(out), "--start-lr", "0"]) == 2
    assert capsys.readouterr().err == "inat-zoo: error: --start-lr must be a positive number, got 0.0\n"
    assert main(["lr-find", str(recipe), "--out", str(out), "--end-lr", "1e-8"]) == 2
    assert "--end-lr must be a number above --start-lr" in capsys.readouterr().err
    assert main(["lr-find", str(recipe), "train.nope=1", "--out", str(out)]) == 2
    assert "train.nope" in capsys.readouterr().err
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["lr-find", str(recipe), "--out", str(out)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert _files(out) == ["notes.txt"] and not (tmp_path / "runs").exists()


def test_num_iter_below_what_the_steep_rule_needs_is_refused_before_anything_runs(recipe, tmp_path, capsys):
    assert MIN_POINTS == 8  # 8 - 8 // 10 - 5 == 3 points left, the least the rule differentiates
    out = tmp_path / "lr"
    for num_iter in ("3", "7"):
        assert main(["lr-find", str(recipe), "--out", str(out), "--num-iter", num_iter]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("inat-zoo: error: --num-iter must be at least 8 ("), err
        assert err.endswith(f"got {num_iter}\n")
    assert not out.exists() and not (tmp_path / "runs").exists()
    check_settings(1e-7, 10.0, MIN_POINTS)  # the minimum itself is accepted


def test_a_run_that_diverges_before_the_rule_has_enough_points_is_one_line():
    lrs = exponential_lrs(1e-3, 1e6, 30)
    falling_then_exploding = [2.0, 1.9, 1.7, 1.5, 1.6, 9.0, 40.0]  # stopped after 7 points: 2 would be left
    with pytest.raises(UsageError) as caught:
        suggest_lr(lrs[:7], falling_then_exploding)
    message = str(caught.value)
    assert "\n" not in message and "diverged after 7 mini-batch" in message and "needs at least 8" in message
    assert "lower --end-lr or raise --num-iter" in message
    lr, index = suggest_lr(lrs[:8], [*falling_then_exploding[:4], 1.2, 1.6, 9.0, 40.0])  # 8 points: 3 kept
    assert index == 2 and lr == lrs[2]  # the fastest fall among the kept points 0..2, never the last (--end-lr)
