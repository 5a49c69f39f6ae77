"""``track.backend: trackio``: its local store inside the run directory (an extras_env test: trackio caps Pillow < 13,
so ``make test`` runs this file in .venv-extras)."""

from __future__ import annotations

import os

import pytest

from inat_zoo.train import train

from .train_helpers import python_train, tiny_recipe, write_recipe

DEFAULTS = {"data": {"num_workers": 2, "augment": {"scale": [0.5, 1.0], "color_jitter": 0.3}}}
EPOCH_SCALARS = {"epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy", "test/accuracy"}


@pytest.mark.extras_env
def test_trackio_keeps_its_store_in_the_run_directory(sample_root, tmp_path, monkeypatch):
    pytest.importorskip("trackio", reason="trackio is an optional extra (inat-zoo[trackio], Pillow < 13)")
    import json
    import sqlite3

    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    metrics = train(tiny_recipe(sample_root, out, **DEFAULTS, track={"backend": "trackio", "project": "tiny"}))
    assert "TRACKIO_DIR" not in os.environ  # set only around trackio's import
    store = out / "tracking" / "trackio"
    import trackio  # the trackio that the run imported, reading the run's store

    assert len(trackio.Api().runs("tiny")) == 1
    with sqlite3.connect(store / "tiny.db") as db:  # trackio's local store: one JSON record per log() call
        logged = {k: v for (row,) in db.execute("SELECT metrics FROM metrics") for k, v in json.loads(row).items()}
    assert EPOCH_SCALARS <= set(logged)
    assert logged["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert "training_curves" in logged and list((store / "media").rglob("*.png"))  # the curves, a trackio.Image
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.extras_env
def test_trackio_says_nothing_after_the_final_summary_line(sample_root, tmp_path):
    """trackio's finish prints "* Run finished. Uploading logs to Trackio" for a local store, once through accelerate
    and once more from its exit hook; the summary line stays the last one, and the store is complete."""
    pytest.importorskip("trackio", reason="trackio is an optional extra (inat-zoo[trackio], Pillow < 13)")
    import json
    import sqlite3
    import subprocess

    out = tmp_path / "run"
    recipe = tiny_recipe(sample_root, out, **DEFAULTS, track={"backend": "trackio", "project": "tiny"})
    recipe["train"]["epochs"] = 1
    proc = python_train(write_recipe(tmp_path / "r.yaml", recipe), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = (s.decode() for s in proc.communicate(timeout=300))
    assert proc.returncode == 0, stderr[-3000:]
    assert "Uploading logs" not in stdout + stderr
    assert stdout.splitlines()[-1].startswith("best epoch 1: validation acc"), stdout
    with sqlite3.connect(out / "tracking" / "trackio" / "tiny.db") as db:
        assert any("test/accuracy" in json.loads(row) for (row,) in db.execute("SELECT metrics FROM metrics"))
