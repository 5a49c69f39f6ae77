"""Small shared pieces of the trainer tests: a tiny recipe on the synthetic sample, and reading a run back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"epoch_time_s", "train_time_s", "images_per_s"}


def tiny_recipe(sample_root: Path, output_dir: Path, **sections) -> dict:
    """FlexibleCNN with 8 filters at 32 px, no workers: a whole epoch takes about a second on one core."""
    recipe = {
        "seed": 7,
        "output_dir": str(output_dir),
        "model": {"name": "inat_flexible_cnn", "args": {"filters": 8}},
        "data": {"root": str(sample_root), "image_size": 32, "num_workers": 0},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return metrics, history


def without_timings(obj):
    """Metrics / history with the wall-clock fields removed: what must be identical between equivalent runs."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def assert_same_results(actual, expected, rel: float = 1e-6, where: str = "") -> None:
    """Equal structure and values; floats equal up to ``rel`` (a resumed run may differ in the last float bits:
    tensors reloaded from a checkpoint can take another SIMD path), everything else (counts, epochs) exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{where}: keys {actual} != {expected}"
        for key in expected:
            assert_same_results(actual[key], expected[key], rel, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_results(a, e, rel, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=1e-9), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def subprocess_env() -> dict:
    """The test environment (offline, temp HF_HOME from conftest) for child processes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def python_train(recipe_path: Path, *overrides: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "inat_zoo.train", str(recipe_path), *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), **popen)
