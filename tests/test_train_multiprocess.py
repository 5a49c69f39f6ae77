"""Two CPU processes (gloo DDP through `accelerate launch`): world_size 2, every evaluation sample counted once."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_train import _accuracy_of_exported_model
from .train_helpers import REPO, read_run, subprocess_env, tiny_recipe, write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_count_every_sample_once(sample_root, tmp_path):
    out = tmp_path / "run"
    # batch 16 per rank: 24 validation / 40 test samples do not split evenly, so DDP pads duplicates in
    # an unfreeze at epoch 2 also exercises re-wrapping DDP around the newly trainable stage; the class-balanced
    # sampler (one global draw, each rank its batches of it) and mixup + CutMix (seeded per rank and step) train too,
    # and early stopping ends epoch 2 of 3 on both ranks (only epoch 1 can improve val_loss by 100 nats)
    recipe = tiny_recipe(
        sample_root,
        out,
        model={"freeze": "until:stages.3", "unfreeze": [{"epoch": 2, "stage": "stages.3"}]},
        data={"sampler": "balanced"},
        train={
            "epochs": 3,
            "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
            "class_weights": "balanced",
            "early_stopping": {"patience": 1, "metric": "val_loss", "min_delta": 100.0},
        },
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "1"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        "-m",
        "inat_zoo.train",
        str(path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics, history = read_run(out)
    assert metrics["world_size"] == 2
    assert metrics["validation"]["num_samples"] == 24 and metrics["test"]["num_samples"] == 40  # as with 1 process
    assert len(history) == 2 and proc.stdout.count("epoch 2/3") == 1  # one line per epoch: the main process only
    assert metrics["early_stopping"]["stopped_epoch"] == 2 and metrics["epochs"] == 2
    assert proc.stdout.count("unfroze stages.3") == 1, proc.stdout
    # every test sample counted exactly once: the same accuracy as the exported model scored by one process
    accuracy, n = _accuracy_of_exported_model(out / "model", sample_root)
    assert n == 40 and accuracy == pytest.approx(metrics["test"]["accuracy"])
    # the final test pass under DDP is the one evaluation: `inat-zoo evaluate` in one process gives every field
    from inat_zoo.evaluate import evaluate

    single = evaluate(str(out), out_dir=tmp_path / "eval", progress=False)
    assert {key: single[key] for key in metrics["test"]} == metrics["test"]
    checkpoints = sorted((out / "checkpoints").glob("checkpoint_*"))
    assert [c.name for c in checkpoints] == ["checkpoint_3", "checkpoint_6"]  # 96 images / (2 ranks x 16): 3 updates
    assert all((c / "random_states_1.pkl").is_file() for c in checkpoints)  # rank 1's RNG state saved too
