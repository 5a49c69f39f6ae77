"""Issue 15's trainer features: early stopping, mixup / CutMix, class weights, the class-balanced sampler.

Unit tests of the pure pieces (the stop rule, the seeded mixup, the weighted soft-target loss, the sampler under
accelerate's sharding), then runs in the shipped defaults (2 DataLoader workers, augmentation on), and the one-line
errors through `inat-zoo train`.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inat_zoo.cli import main
from inat_zoo.config import typed_recipe
from inat_zoo.data.seeding import BalancedSampler, SampleKey, sample_seed
from inat_zoo.errors import UsageError
from inat_zoo.train import STATE_FILE, complete_checkpoints, train
from inat_zoo.trainer.early_stopping import StopRule, judge
from inat_zoo.trainer.losses import (
    WeightedSoftTargetCrossEntropy,
    class_weights,
    create_criterion,
    create_mixup,
    dominant_labels,
)

from .test_train import USER_DEFAULTS
from .test_train_preflight import demo_args
from .train_helpers import assert_same_results, read_run, tiny_recipe, without_timings


# ------------------------------------------------------------------------------------------- early stopping
def _run_rule(rule: StopRule, values: list[float]) -> tuple[list[int], int | None]:
    """Feed ``values`` epoch by epoch: (the epochs that improved, the epoch that stopped or None)."""
    best, since, improved = None, 0, []
    for epoch, value in enumerate(values, 1):
        verdict = judge(rule, value, best, since)
        best, since = verdict.best, verdict.epochs_since_best
        if verdict.improved:
            improved.append(epoch)
        if verdict.stop:
            return improved, epoch
    return improved, None


def test_stop_rule_waits_patience_epochs_beyond_min_delta():
    loss = StopRule("val_loss", min_delta=0.1, patience=2)
    # 1.0 -> 0.95 is not better by more than 0.1; 0.8 is; then two epochs without: stop at epoch 5
    assert _run_rule(loss, [1.0, 0.95, 0.8, 0.75, 0.9, 0.1]) == ([1, 3], 5)
    assert loss.reason() == "val_loss did not improve by 0.1 for 2 epochs"
    accuracy = StopRule("val_accuracy", patience=1)  # higher is better; any increase counts without min_delta
    assert _run_rule(accuracy, [0.1, 0.2, 0.2]) == ([1, 2], 3)
    assert accuracy.reason() == "val_accuracy did not improve for 1 epoch"
    # off (early_stopping: null): today's rule, best validation accuracy by any increase, never stopping
    assert _run_rule(StopRule.from_recipe(None), [0.5, 0.4, 0.4, 0.6, 0.6]) == ([1, 4], None)


# --------------------------------------------------------------------------------------------------- sampler
def _prepared_batches(sampler_of, epoch: int, rank: int, batch_size: int = 4) -> list[list[SampleKey]]:
    """The batches rank ``rank`` of 2 reads in ``epoch`` when accelerate prepares a loader over the sampler that
    ``sampler_of()`` builds (each rank builds its own, as each process does)."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    class Keys:
        def __len__(self):
            return len(sampler)

        def __getitem__(self, key):
            return key

    sampler = sampler_of()
    loader = DataLoader(Keys(), batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=list)
    prepared = prepare_data_loader(
        loader, num_processes=2, process_index=rank, put_on_device=False, use_seedable_sampler=True
    )
    prepared.set_epoch(epoch)
    return list(prepared)


def test_balanced_sampler_is_one_seeded_draw_sharded_disjointly_and_balanced():
    labels = [0] * 80 + [1] * 15 + [2] * 5  # 80 / 15 / 5 rows
    draw = BalancedSampler(labels, seed=3)
    draw.set_epoch(1)
    first = draw.draw()
    again = BalancedSampler(labels, seed=3)
    again.set_epoch(1)
    assert again.draw() == first and len(first) == len(labels)  # a function of (seed, epoch) only
    again.set_epoch(2)
    assert again.draw() != first
    assert BalancedSampler(labels, seed=4).draw() != BalancedSampler(labels, seed=3).draw()

    # under accelerate, two ranks read disjoint batches of the one global draw, which together make it whole
    shards = [_prepared_batches(lambda: BalancedSampler(labels, seed=3), epoch=1, rank=r) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 12  # 100 draws = 25 batches of 4: 24 shared out, 12 each
    interleaved = [key for pair in zip(*shards, strict=True) for batch in pair for key in batch]
    assert [key.index for key in interleaved] == first[:96]
    assert all(key.epoch == 1 for key in interleaved)

    # every class about equally often, whatever its row count; each copy of a row has its own augmentation seed
    counts = np.zeros(3)
    for epoch in range(20):
        draw.set_epoch(epoch)
        keys = list(draw)
        counts += np.bincount([labels[k.index] for k in keys], minlength=3)
        assert len({(k.index, k.repeat) for k in keys}) == len(keys)
    assert counts / counts.sum() == pytest.approx([1 / 3] * 3, abs=0.03)
    assert sample_seed(3, 1, 97, 1) != sample_seed(3, 1, 97, 0) == sample_seed(3, 1, 97)


# ----------------------------------------------------------------------------------------------------- mixup
def test_mixup_depends_on_seed_epoch_step_only_and_leaves_the_callers_rngs():
    recipe = typed_recipe({"seed": 5, "train": {"label_smoothing": 0.1, "epochs": 3, "mixup": {
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mode": "elem", "off_epoch": 3}}})  # fmt: skip
    images = torch.rand(8, 3, 16, 16)
    labels = torch.arange(8) % 4

    def mixed(epoch, step, rank=0, noise=0):
        random.seed(noise), np.random.seed(noise), torch.manual_seed(noise)  # whatever ran before
        out = create_mixup(recipe, 4, rank)(images.clone(), labels, epoch, step)
        after = (random.random(), np.random.rand(), torch.rand(1).item())
        random.seed(noise), np.random.seed(noise), torch.manual_seed(noise)
        assert after == (random.random(), np.random.rand(), torch.rand(1).item())  # the caller's streams untouched
        return out

    x, y = mixed(2, 5)
    x2, y2 = mixed(2, 5, noise=123)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, images) and y.shape == (8, 4) and torch.allclose(y.sum(1), torch.ones(8))
    for other in (mixed(2, 6)[0], mixed(1, 5)[0], mixed(2, 5, rank=1)[0]):
        assert not torch.equal(x, other)
    x_off, y_off = mixed(3, 5)  # off_epoch: nothing mixed, timm's smoothed one-hot targets
    assert torch.equal(x_off, images)
    assert torch.equal(dominant_labels(y_off), labels) and y_off.max().item() == pytest.approx(0.9 + 0.1 / 4)


def test_weighted_soft_target_loss_and_balanced_weights():
    from timm.loss import SoftTargetCrossEntropy

    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 2, 1])
    weight = torch.tensor([0.5, 2.0, 1.0])
    one_hot = F.one_hot(labels, 3).float()
    weighted = WeightedSoftTargetCrossEntropy(weight)
    torch.testing.assert_close(weighted(logits, one_hot), F.cross_entropy(logits, labels, weight=weight))
    soft = torch.softmax(torch.randn(6, 3), 1)
    torch.testing.assert_close(WeightedSoftTargetCrossEntropy(torch.ones(3))(logits, soft),
                               SoftTargetCrossEntropy()(logits, soft))  # fmt: skip
    recipe = typed_recipe({"train": {"class_weights": "balanced", "mixup": {}}})
    assert isinstance(create_criterion(recipe, weight, soft_targets=True), WeightedSoftTargetCrossEntropy)
    # sklearn's 'balanced': n_samples / (n_classes * count_c)
    torch.testing.assert_close(class_weights(recipe, [0, 0, 0, 1, 2, 2], 3), torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    with pytest.raises(UsageError, match=r"classes \[1\] have no training images"):
        class_weights(recipe, [0, 2], 3)


# ------------------------------------------------------------------------------------------------------ runs
def test_early_stopping_stops_within_patience_and_resuming_changes_nothing(sample_root, tmp_path, capsys):
    out = tmp_path / "run"
    stop = {"patience": 2, "metric": "val_loss", "min_delta": 100.0}  # only epoch 1 can improve by 100 nats
    recipe = tiny_recipe(sample_root, out, **USER_DEFAULTS, train={"epochs": 6, "early_stopping": stop})
    metrics = train(recipe)
    on_disk, history = read_run(out)
    reason = "val_loss did not improve by 100 for 2 epochs"
    assert on_disk == metrics and len(history) == 3 and metrics["epochs"] == 3
    assert metrics["early_stopping"] == {"stopped_epoch": 3, "best_epoch": 1, "metric": "val_loss", "reason": reason}
    assert metrics["best_epoch"] == 1 and metrics["validation"]["loss"] == history[0]["val_loss"]
    assert json.loads((out / "model" / "config.json").read_text())["inat_zoo"]["epoch"] == 1
    assert f"early stopping at epoch 3: {reason}" in capsys.readouterr().out

    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")}
    assert train({**recipe, "resume": True}) == metrics
    assert "stopped early at epoch 3 (val_loss did not improve by 100 for 2 epochs; best epoch 1): nothing to resume" \
        in capsys.readouterr().out  # fmt: skip
    assert {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")} == before


def test_mixup_cutmix_class_weights_balanced_sampler_train_and_resume_exactly(sample_root, tmp_path):
    """Everything at once with 2 workers augmenting; then, as if killed right after a mid-epoch checkpoint, resumed
    in epoch 2: the same history (mixes, draws and augmentation are functions of seed, epoch and step only)."""
    out = tmp_path / "run"
    mixup = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5, "off_epoch": 3}
    recipe = tiny_recipe(
        sample_root, out, **USER_DEFAULTS,
        train={"epochs": 3, "mixup": mixup, "class_weights": "balanced", "label_smoothing": 0.1,
               "checkpoint_every_steps": 4, "keep_checkpoints": 10},
    )  # fmt: skip
    recipe["data"] = {**recipe["data"], "sampler": "balanced"}
    metrics = train(recipe)
    _, history = read_run(out)
    assert len(history) == 3 and metrics["test"]["num_samples"] == 40
    assert all(np.isfinite(r["train_loss"]) and 0.0 <= r["train_accuracy"] <= 1.0 for r in history)
    state = json.loads((out / "checkpoints" / "checkpoint_8" / STATE_FILE).read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    for later in complete_checkpoints(out)[-3:]:  # checkpoint_12, 16, 18
        shutil.rmtree(later)
    (out / "metrics.json").unlink()
    train({**recipe, "resume": True})
    _, resumed = read_run(out)
    assert_same_results(without_timings(resumed), without_timings(history), where="history")


def test_head_feature_cache_steps_aside_for_mixup_and_the_balanced_sampler_not_class_weights(
    sample_root, tmp_path, capsys
):
    out = tmp_path / "run"
    forced = tiny_recipe(sample_root, out, model={"freeze": "head"}, train={"head_feature_cache": True})
    with pytest.raises(UsageError, match="head_feature_cache=true is not possible: train.mixup mixes images"):
        train({**forced, "train": {**forced["train"], "mixup": {"cutmix_alpha": 1.0, "mixup_alpha": 0.0}}})
    with pytest.raises(UsageError, match="not possible: data.sampler=balanced draws the training images"):
        train({**forced, "data": {**forced["data"], "sampler": "balanced"}})
    assert not out.exists()
    # class weights only weigh the loss, the same over cached features: the cache stays (and trains weighted)
    recipe = tiny_recipe(sample_root, out, model={"freeze": "head"}, train={"epochs": 1, "class_weights": "balanced"})
    train(recipe)
    assert "head feature cache: 96 training features" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.mixup={cutmix_alpha: 1.0}", "train.batch_size=15"], "'train.batch_size' must be even with mixup"),
        (["train.class_weights=[1, 2, 3]"], "'train.class_weights' has 3 weights; the data has 10 classes"),
        (["train.early_stopping={metric: acc}"], "'train.early_stopping.metric' must be one of: val_accuracy, val_"),
        (["train.mixup={cutmix_alhpa: 1}"], "key 'train.mixup.cutmix_alhpa' (did you mean 'cutmix_alpha'?)"),
        (["train.early_stopping={patience: 0}"], "'train.early_stopping.patience' must be >= 1, got 0"),
        (["train.class_weights=[1, -2]"], "'train.class_weights' must be null, balanced or a list of one weight > 0"),
        (["data.sampler=weighted"], "'data.sampler' must be one of: random, balanced; got 'weighted'"),
        (["train.epochs=2", "train.mixup={off_epoch: 3}"], "'train.mixup.off_epoch' is 3, after the last epoch"),
    ],
)  # fmt: skip
def test_feature_mistakes_stop_the_start_in_one_line(sample_root, tmp_path, capsys, overrides, fragment):
    out = tmp_path / "run"
    assert main(["train", *demo_args(sample_root, out, *overrides)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err
    assert not out.exists()


def test_data_sampler_balanced_reaches_the_train_loader(sample_root):
    from inat_zoo.data import load_inat12k
    from inat_zoo.data.seeding import EpochSampler
    from inat_zoo.trainer.loaders import image_loaders

    splits = load_inat12k(sample_root, seed=7)
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    for sampler, kind in (("random", EpochSampler), ("balanced", BalancedSampler)):
        recipe = typed_recipe({"data": {"root": str(sample_root), "sampler": sampler}, "train": {"batch_size": 8}})
        train_loader, val_loader, _ = image_loaders(splits, recipe, config)
        assert type(train_loader.sampler) is kind and type(val_loader.sampler) is not kind
    labels = list(splits["train"]["label"])
    assert train_loader.sampler.weights.tolist() == [1 / labels.count(label) for label in labels]
