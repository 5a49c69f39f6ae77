"""The trainer end to end on the tiny synthetic sample: run directory content, exported model, validation errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
import timm
import torch
import yaml

import inat_zoo  # noqa: F401  (registers inat_*)
from inat_zoo.errors import UsageError
from inat_zoo.train import STATE_FILE, complete_checkpoints, train

from .train_helpers import assert_same_results, python_train, read_run, tiny_recipe, without_timings, write_recipe

# What users run: the shipped recipes' 2 DataLoader workers, random crops and flips (plus the batch-wise colour jitter
# and erasing), and head dropout, so every source of randomness in the loop is in play.
USER_DEFAULTS = {
    "model": {"args": {"filters": 8, "drop_rate": 0.1}},
    "data": {"num_workers": 2, "augment": {"scale": [0.5, 1.0], "color_jitter": 0.3, "re_prob": 0.25}},
}


@pytest.fixture(scope="module")
def baseline(sample_root, tmp_path_factory):
    """One uninterrupted 4-epoch run, shared by the content checks here and the kill/resume tests."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    recipe = tiny_recipe(sample_root, out, **USER_DEFAULTS, train={"epochs": 4})
    metrics = train(recipe)
    return recipe, out, metrics


def _assert_same_run(out, base_out, base_metrics) -> None:
    """History, metrics and the exported weights of two runs agree (timings aside)."""
    from safetensors.torch import load_file

    metrics, history = read_run(out)
    _, base_history = read_run(base_out)
    assert_same_results(without_timings(history), without_timings(base_history), where="history")
    assert_same_results(without_timings(metrics), without_timings(base_metrics), where="metrics")
    assert metrics["test"]["accuracy"] == base_metrics["test"]["accuracy"]  # the same predictions, exactly
    weights, base_weights = (load_file(str(o / "model" / "model.safetensors")) for o in (out, base_out))
    assert weights.keys() == base_weights.keys()
    for name, value in base_weights.items():
        # last float bits only: the killed and resumed runs are child processes with their own thread count, and
        # a CPU kernel's summation order follows it (a different augmentation would move weights by ~1e-2)
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


def _accuracy_of_exported_model(model_dir, sample_root) -> tuple[float, int]:
    """Test accuracy of the model folder computed independently of the trainer (timm local-dir + data layer)."""
    from timm.data import resolve_model_data_config

    from inat_zoo.data import create_image_transform, load_inat12k

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    data_config = resolve_model_data_config(model)
    transform = create_image_transform(data_config, is_training=False)
    test = load_inat12k(sample_root)["test"]
    correct = 0
    with torch.no_grad():
        for item in test:
            logits = model(transform(item["image"].convert("RGB"))[None])
            correct += int(logits.argmax(1).item() == item["label"])
    return correct / len(test), len(test)


def test_run_directory_content(baseline, sample_root):
    recipe, out, metrics = baseline
    on_disk, history = read_run(out)
    assert metrics == on_disk
    assert metrics["world_size"] == 1 and metrics["epochs"] == 4
    assert metrics["validation"]["num_samples"] == 24  # 20% of 12 train images x 10 classes
    assert metrics["test"]["num_samples"] == 40  # the val/ folder: 4 x 10
    assert metrics["params"] == metrics["trainable_params"] > 0
    assert metrics["images_per_s"] > 0 and metrics["train_time_s"] > 0

    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s"}
    assert set(history[0]) == keys
    best = max(history, key=lambda r: r["val_accuracy"])  # first epoch with the highest accuracy
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["validation"]["accuracy"] == best["val_accuracy"]
    assert metrics["validation"]["loss"] == best["val_loss"]
    assert history[-1]["lr"] < history[0]["lr"]  # cosine decays after the 1-epoch warmup

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 4 and saved["train"]["optimizer"] == "adamw"  # resolved: defaults filled
    assert saved["output_dir"] == str(out)

    checkpoints = complete_checkpoints(out)
    assert [c.name for c in checkpoints] == ["checkpoint_18", "checkpoint_24"]  # 6 updates/epoch, last 2 kept
    state = json.loads((checkpoints[-1] / STATE_FILE).read_text())
    assert state["epoch"] == 4 and without_timings(state["history"]) == without_timings(history)


def test_exported_model_is_the_best_epoch_and_matches_test_metrics(baseline, sample_root):
    _, out, metrics = baseline
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "inat_flexible_cnn"
    assert config["num_classes"] == 10 and config["label_names"][0].startswith("synth_")
    assert config["model_args"]["filters"] == 8
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]  # the data config actually used
    assert config["inat_zoo"]["epoch"] == metrics["best_epoch"]
    accuracy, n = _accuracy_of_exported_model(out / "model", sample_root)
    assert n == metrics["test"]["num_samples"]
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


def test_existing_run_is_never_overwritten(baseline):
    recipe, out, _ = baseline
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(UsageError, match="already holds a run; pass resume=true"):
        train(recipe)
    with pytest.raises(UsageError, match="recipe differs .* train.lr"):
        train({**recipe, "resume": True, "train": {**recipe["train"], "lr": 0.5}})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_resuming_a_completed_run_changes_nothing_unless_its_test_pass_is_missing(baseline, capsys):
    """All train.epochs ran and metrics.json is written: like an early-stopped run, resume=true says so and touches
    nothing (not even recipe.yaml). Killed before its final test pass (no metrics.json): only that pass runs."""
    recipe, out, metrics = baseline
    capsys.readouterr()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")}
    assert train({**recipe, "resume": True}) == metrics
    log = capsys.readouterr().out
    said = f"{out} finished all 4 epochs (best epoch {metrics['best_epoch']}): nothing to resume, nothing changed"
    assert said in log
    assert "test acc" not in log
    assert {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")} == before

    (out / "metrics.json").unlink()  # as if killed after the last checkpoint, before the test pass finished
    resumed = train({**recipe, "resume": True})
    log = capsys.readouterr().out
    assert "nothing to resume" not in log and "test acc" in log
    assert_same_results(without_timings(resumed), without_timings(metrics), where="metrics")
    assert read_run(out)[0] == resumed
    assert [c.name for c in complete_checkpoints(out)] == ["checkpoint_18", "checkpoint_24"]  # no epoch retrained


def test_resume_refuses_a_folder_that_is_not_a_run(sample_root, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="holds no recipe.yaml, so it is not a run directory"):
        train(tiny_recipe(sample_root, out, resume=True))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"data": {"root": "/nonexistent/inat"}}, "data.root '/nonexistent/inat' does not exist"),
        ({"model": {"args": {"filters": 8, "widht": 3}}}, "model.args for 'inat_flexible_cnn' are not accepted"),
        ({"model": {"name": "resnet_18"}}, "unknown timm model 'resnet_18'"),
        ({"train": {"epochs": "many"}}, "'train.epochs' must be an integer"),
    ],
)
def test_mistakes_write_nothing(sample_root, tmp_path, change, fragment):
    out = tmp_path / "run"
    recipe = tiny_recipe(sample_root, out)
    for section, values in change.items():
        recipe[section] = {**recipe[section], **values}
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        train(recipe)
    assert not out.exists()


def test_callback_exception_stops_training_and_keeps_the_run(sample_root, tmp_path):
    class Pruned(Exception):
        pass

    seen = []

    def callback(epoch, record):
        seen.append((epoch, record["val_accuracy"]))
        raise Pruned

    out = tmp_path / "run"
    with pytest.raises(Pruned):
        train(tiny_recipe(sample_root, out, train={"epochs": 3}), epoch_callback=callback)
    (_,) = history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert seen == [(1, history[0]["val_accuracy"])]
    assert not (out / "metrics.json").exists() and (out / "model" / "config.json").is_file()


def test_freeze_unfreeze_ema_accumulation(sample_root, tmp_path):
    """The optional parts together: frozen stages + unfreeze schedule, EMA, grad accumulation, clipping, smoothing,
    layer decay, step schedule, bf16 autocast and channels_last (whose weights must still export)."""
    out = tmp_path / "run"
    recipe = tiny_recipe(
        sample_root,
        out,
        model={"freeze": "until:stages.2", "unfreeze": [{"epoch": 2, "stage": "stages.2"}]},
        train={
            "epochs": 2,
            "grad_accum_steps": 2,
            "clip_grad": 1.0,
            "label_smoothing": 0.1,
            "ema": 0.9,
            "layer_decay": 0.8,
            "scheduler": "step",
            "mixed_precision": "bf16",  # autocasts for real on CPU
            "channels_last": True,
        },
    )
    metrics = train(recipe)
    assert metrics["trainable_params"] < metrics["params"]
    state = json.loads((complete_checkpoints(out)[-1] / STATE_FILE).read_text())
    assert state["unfrozen"] == ["stages.2"] and state["global_update"] == 6  # 6 batches / 2 per update, 2 epochs
    # the frozen prefix did not move: stages.0 of the exported (EMA) model equals a fresh model's with the same seed
    from accelerate.utils import set_seed

    set_seed(recipe["seed"])
    fresh = timm.create_model("inat_flexible_cnn", num_classes=10, filters=8)
    exported = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True)
    exported_stem = exported.stages[0].state_dict()
    for name, value in fresh.stages[0].state_dict().items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(exported_stem[name], value, msg=name)
    assert not torch.equal(fresh.head.fc.weight, exported.head.fc.weight)


@pytest.mark.parametrize("checkpoint_every_steps", [None, 4], ids=["epoch-boundary", "mid-epoch"])
def test_sigkill_after_first_checkpoint_then_resume_equals_uninterrupted(baseline, tmp_path, checkpoint_every_steps):
    """SIGKILL as soon as the first checkpoint is committed (the end of epoch 1, or update 4 of 6 inside it), then
    ``resume=true``: the same history, metrics and weights as the uninterrupted run, with 2 workers augmenting."""
    recipe, base_out, base_metrics = baseline
    out = tmp_path / "run"
    recipe = {**recipe, "output_dir": str(out), "train": {**recipe["train"]}}
    recipe["train"]["checkpoint_every_steps"] = checkpoint_every_steps
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    proc = python_train(path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not complete_checkpoints(out):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "metrics.json").exists(), "the run finished before the kill: nothing was tested"
    state = json.loads((complete_checkpoints(out)[-1] / STATE_FILE).read_text())
    assert state["batches_done"] == (4 if checkpoint_every_steps else 0)  # killed where the test says
    resumed = python_train(path, "resume=true", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from" in log
    _assert_same_run(out, base_out, base_metrics)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_number_of_workers_does_not_change_the_run(baseline, tmp_path, num_workers):
    recipe, base_out, base_metrics = baseline
    out = tmp_path / "run"
    train({**recipe, "output_dir": str(out), "data": {**recipe["data"], "num_workers": num_workers}})
    _assert_same_run(out, base_out, base_metrics)


def test_head_strategy_trains_on_cached_features_with_wandb_offline(sample_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")  # the recipe's track.mode decides; offline needs no login and no network
    out = tmp_path / "run"
    recipe = tiny_recipe(
        sample_root,
        out,
        model={"freeze": "head"},
        train={"epochs": 2, "lr": 1e-2, "batch_size": 8},
        track={"wandb": True, "mode": "offline", "project": "inat_zoo_test"},
    )
    metrics = train(recipe)
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    keys = (b"train/loss", b"epoch/val_accuracy", b"test/accuracy", b"inat_flexible_cnn")
    # W&B's writer is its own service process: on a loaded machine the file can trail wandb.finish() by a moment
    deadline = time.monotonic() + 60
    while not all(key in run_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    logged = run_file.read_bytes()
    for key in keys:
        assert key in logged, key  # per-step, per-epoch, final test metrics and the recipe as config
    assert "head feature cache: 96 training features" in capsys.readouterr().out  # 12 updates/epoch: steps logged
    assert metrics["trainable_params"] < metrics["params"]
    # the test metrics computed on cached features equal the exported full model scored on images
    accuracy, _ = _accuracy_of_exported_model(out / "model", sample_root)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    with pytest.raises(UsageError, match="head_feature_cache=true needs model.freeze=head"):
        train(tiny_recipe(sample_root, tmp_path / "other", train={"head_feature_cache": True}))


def test_head_feature_cache_auto_steps_aside_for_requested_augmentation(sample_root, tmp_path, capsys):
    augment = {"color_jitter": 0.4}
    recipe = tiny_recipe(sample_root, tmp_path / "run", model={"freeze": "head"}, data={"augment": augment})
    recipe["train"]["epochs"] = 1
    train(recipe)
    out = capsys.readouterr().out
    assert "head feature cache off: data.augment sets color_jitter" in out
    assert "head feature cache:" not in out.replace("head feature cache off", "")
    recipe = tiny_recipe(sample_root, tmp_path / "forced", model={"freeze": "head"}, data={"augment": augment})
    recipe["train"]["head_feature_cache"] = True
    with pytest.raises(UsageError, match="head_feature_cache=true is not possible: data.augment sets color_jitter"):
        train(recipe)


def test_only_committed_checkpoints_are_trusted(tmp_path):
    folder = tmp_path / "checkpoints"
    for name, complete in [("checkpoint_6", True), ("checkpoint_12", False), (".checkpoint_18.partial", True)]:
        (folder / name).mkdir(parents=True)
        if complete:
            (folder / name / STATE_FILE).write_text("{}")
    assert complete_checkpoints(tmp_path) == [folder / "checkpoint_6"]


def test_mid_epoch_checkpoints_are_listed_and_resume_from_the_last(sample_root, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(sample_root, out, train={"epochs": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 10})
    train(recipe)
    _, history = read_run(out)
    names = [c.name for c in complete_checkpoints(out)]
    assert names == ["checkpoint_4", "checkpoint_6", "checkpoint_8", "checkpoint_12"]  # 6 updates per epoch
    state = json.loads((out / "checkpoints" / "checkpoint_8" / STATE_FILE).read_text())
    assert (state["epoch"], state["batches_done"], state["global_update"]) == (1, 2, 8)
    # as if the run had been killed right after checkpoint_8, in the middle of epoch 2
    shutil.rmtree(out / "checkpoints" / "checkpoint_12")
    (out / "metrics.json").unlink()
    train({**recipe, "resume": True})
    _, resumed_history = read_run(out)
    assert [c.name for c in complete_checkpoints(out)][-1] == "checkpoint_12"
    assert_same_results(without_timings(resumed_history), without_timings(history), where="history")


@pytest.mark.parametrize("layer_decay", [None, 0.8])
def test_unfreeze_groups_follow_the_models_no_weight_decay(layer_decay):
    """Groups added at unfreeze time are built as create_optimizer_v2 builds the first ones: a model's
    no_weight_decay() names (a ViT's pos_embed, cls_token) get no weight decay."""
    from timm.optim import create_optimizer_v2

    from inat_zoo.config import typed_recipe
    from inat_zoo.train import _param_groups

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3, depth=2)
    recipe = typed_recipe({"train": {"weight_decay": 0.05, "layer_decay": layer_decay}})
    decay_of = {id(p): g["weight_decay"] for g in _param_groups(model, recipe) for p in g["params"]}
    assert decay_of[id(model.pos_embed)] == 0.0 and decay_of[id(model.cls_token)] == 0.0
    assert decay_of[id(model.blocks[0].attn.qkv.weight)] == 0.05
    reference = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
    assert decay_of == {id(p): g["weight_decay"] for g in reference.param_groups for p in g["params"]}
