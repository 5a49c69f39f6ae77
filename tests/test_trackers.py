"""``track.backend``: the same scalars and the training-curves picture to TensorBoard and MLflow, each store inside
the run directory (read back with the libraries' own readers), and a missing package refused in one line. trackio
(Pillow < 13) is tested in ``test_trackers_trackio.py``, which ``make test`` runs in the extras venv."""

from __future__ import annotations

import importlib.util
import os

import pytest

from inat_zoo.cli import main
from inat_zoo.train import train

from .train_helpers import tiny_recipe, write_recipe

DEFAULTS = {"data": {"num_workers": 2, "augment": {"scale": [0.5, 1.0], "color_jitter": 0.3}}}
EPOCH_SCALARS = {"epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy", "test/accuracy"}


def _tensorboard(run, project):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tracking" / "tensorboard" / project), size_guidance={"images": 0}).Reload()
    return events.Tags()["scalars"], events


def test_tensorboard_and_mlflow_get_the_scalars_and_the_curves(sample_root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow's default store is a database in the current folder: it must stay empty
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    track = {"backend": ["tensorboard", "mlflow"], "project": "tiny"}
    metrics = train(tiny_recipe(sample_root, out, **DEFAULTS, train={"epochs": 2}, track=track))

    scalars, events = _tensorboard(out, "tiny")
    assert EPOCH_SCALARS | {"train/loss", "train/lr"} <= set(scalars)
    assert [e.value for e in events.Scalars("test/accuracy")] == [pytest.approx(metrics["test"]["accuracy"])]
    assert len(events.Scalars("epoch/val_accuracy")) == 2
    (image,) = events.Images("training_curves")
    assert image.width == 1000 and image.height == 400  # the 10x4 inch figure at 100 dpi

    uri = f"sqlite:///{out / 'tracking' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert EPOCH_SCALARS <= set(run.data.metrics)
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.params["train.epochs"] == "2"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["training_curves.png"]
    assert experiment.artifact_location.startswith(str(out / "tracking" / "mlflow"))
    assert os.listdir(cwd) == []  # no mlruns/, mlflow.db or mlartifacts/ where the command ran
    # MLflow's process-wide URI is put back: later MLflow use in this process does not write into the run
    import mlflow

    assert "MLFLOW_TRACKING_URI" not in os.environ and str(out) not in mlflow.get_tracking_uri()


@pytest.mark.skipif(importlib.util.find_spec("trackio") is not None, reason="trackio is installed here")
def test_a_missing_tracker_package_names_the_extra(sample_root, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, out))
    assert main(["train", str(recipe), "track.backend=[tensorboard, trackio]"]) == 2
    assert capsys.readouterr().err == (
        "inat-zoo: error: track.backend trackio: the trackio package is not installed "
        "(pip install 'inat-zoo[trackio]')\n"
    )
    assert not out.exists()
