"""Experiment trackers through accelerate (``track.backend``, ``track.wandb``): which ones, where their stores live,
and the end-of-run picture.

Every tracker gets the same scalars through ``accelerator.log`` (accelerate's ``log_with=[...]`` and
``init_trackers(project, config, init_kwargs)``). Each local store lives inside the run directory
(:func:`inat_zoo.rundir.tracking_dir`), never in the current directory:

- TensorBoard: event files under ``<run>/tracking/tensorboard/<project>/`` (accelerate's ``logging_dir``);
- MLflow: the SQLite tracking store ``<run>/tracking/mlflow/mlflow.db`` (MLflow's own default would be a database
  in the current folder; its file store is deprecated) and the experiment's artifacts in ``.../mlflow/artifacts``;
- trackio: its ``TRACKIO_DIR`` is ``<run>/tracking/trackio``. trackio reads that variable once, when it is
  imported, so it is set only around that import and put back afterwards (:func:`_import_trackio`);
- W&B: ``<run>/wandb`` (``init(dir=<run>)``), as before.

At the end of the run the training-curves figure (:func:`inat_zoo.plots.training_curves_figure`) goes to every
backend that takes pictures: TensorBoard and W&B through accelerate's ``log_images``, MLflow through
``mlflow.log_figure`` (accelerate's MLflow tracker), trackio as a ``trackio.Image``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

from ..errors import UsageError
from ..recipe_schema import Recipe
from ..rundir import MLFLOW_ARTIFACTS, MLFLOW_DB, tracking_dir

# tracker -> (module that must be importable, what to install)
_PACKAGES = {
    "wandb": ("wandb", "pip install wandb"),
    "tensorboard": ("tensorboard", "pip install 'inat-zoo[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'inat-zoo[mlflow]'"),
    "trackio": ("trackio", "pip install 'inat-zoo[trackio]'"),
}
CURVES = "training_curves"


def backends(recipe: Recipe) -> list[str]:
    """The recipe's trackers in order: ``track.backend``, plus ``wandb`` when ``track.wandb`` is true."""
    names = list(recipe.track.backend)
    if recipe.track.wandb and "wandb" not in names:
        names.append("wandb")
    return names


def check_trackers(recipe: Recipe) -> None:
    """The preflight's check: each tracker's package is installed. Raises :class:`UsageError` naming the extra to
    install."""
    for name in backends(recipe):
        module, install = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"track.backend {name}: the {module} package is not installed ({install})")


def accelerator_options(recipe: Recipe) -> dict:
    """``Accelerator`` keywords of the trackers: ``log_with`` (None without trackers) and the ``logging_dir`` of
    TensorBoard (``<run>/tracking/tensorboard``), for ``ProjectConfiguration``."""
    names = backends(recipe)
    return {"log_with": names or None, "logging_dir": str(tracking_dir(recipe.output_dir, "tensorboard"))}


def _init_kwargs(recipe: Recipe) -> dict:
    track, out = recipe.track, Path(recipe.output_dir)
    named = {"run_name": track.run_name} if track.run_name else {}
    kwargs = {
        "wandb": {"mode": track.mode, "dir": str(out), **({"name": track.run_name} if track.run_name else {})},
        "mlflow": {"logging_dir": str(tracking_dir(out, "mlflow") / MLFLOW_ARTIFACTS), **named},
        "trackio": {"name": track.run_name} if track.run_name else {},
    }
    return {name: kwargs[name] for name in backends(recipe) if name in kwargs}


def _import_trackio(directory: Path) -> None:
    """Import trackio with ``TRACKIO_DIR=directory``, then put the variable back as it was.

    trackio reads ``TRACKIO_DIR`` once, when it is imported (``trackio.utils.TRACKIO_DIR``, copied into several of
    its modules), and has no per-run directory argument; a trackio imported earlier in this process (another run, a
    notebook) with another store is imported afresh, so accelerate's tracker (which imports trackio when it starts)
    writes into this run.
    """
    loaded = sys.modules.get("trackio.utils")
    if loaded is not None and Path(loaded.TRACKIO_DIR).resolve() == directory:
        return
    for name in [name for name in sys.modules if name == "trackio" or name.startswith("trackio.")]:
        del sys.modules[name]
    before = os.environ.get("TRACKIO_DIR")
    os.environ["TRACKIO_DIR"] = str(directory)
    try:
        importlib.import_module("trackio")
    finally:
        if before is None:
            os.environ.pop("TRACKIO_DIR", None)
        else:
            os.environ["TRACKIO_DIR"] = before


def start_trackers(accelerator, recipe: Recipe, config: dict) -> str | None:
    """``accelerator.init_trackers`` for the recipe's trackers (nothing without any), their stores inside the run
    directory: the MLflow tracking URI set to the run's SQLite file, trackio's directory set around its import.

    Returns the MLflow tracking URI set before (``MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` mirrors;
    None when unset), for :func:`end_trackers` to put back.
    """
    previous_mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI")
    names = backends(recipe)
    if not names:
        return previous_mlflow_uri
    out = Path(recipe.output_dir)
    if accelerator.is_main_process:
        for name in names:
            if name != "wandb":
                tracking_dir(out, name).mkdir(parents=True, exist_ok=True)
    if "mlflow" in names:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{(tracking_dir(out, 'mlflow') / MLFLOW_DB).resolve()}")
    if "trackio" in names:
        _import_trackio(tracking_dir(out, "trackio").resolve())
    accelerator.init_trackers(recipe.track.project, config=config, init_kwargs=_init_kwargs(recipe))
    return previous_mlflow_uri


def end_trackers(accelerator, recipe: Recipe, previous_mlflow_uri: str | None = None) -> None:
    """``accelerator.end_training()``; with trackio, quietly. trackio's ``Run.finish`` prints "* Run finished.
    Uploading logs to Trackio (please wait...)" even for a local store, and accelerate's tracker finishes the run
    without clearing trackio's current run, so trackio's exit hook finishes (and prints) it once more: stdout goes to
    a null sink around this call only, and the finished run stops being trackio's current one. MLflow's process-wide
    tracking URI (and its ``MLFLOW_TRACKING_URI`` mirror) goes back to ``previous_mlflow_uri``, what
    :func:`start_trackers` found, so later MLflow use in this process does not write into this run."""
    names = backends(recipe)
    quiet = contextlib.redirect_stdout(io.StringIO()) if "trackio" in names else contextlib.nullcontext()
    with quiet:
        accelerator.end_training()
    trackio = sys.modules.get("trackio")
    if "trackio" in names and trackio is not None:  # imported: the run started (start_trackers)
        trackio.context_vars.current_run.set(None)
    if "mlflow" in names and "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(previous_mlflow_uri)  # None: unset, MLflow's own default again


def log_curves(accelerator, history: list[dict], best_epoch: int | None, step: int) -> None:
    """The training-curves figure (loss and accuracy per epoch) to every tracker that takes pictures; main process
    only (on other ranks accelerate's trackers are blank objects)."""
    if not accelerator.trackers or not accelerator.is_main_process:
        return
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..plots import training_curves_figure

    figure = training_curves_figure(history, best_epoch)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({CURVES: pixels[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({CURVES: [pixels]}, step=step)
        elif tracker.name == "mlflow":
            tracker.log_figure(figure, f"{CURVES}.png")
        elif tracker.name == "trackio":
            import trackio

            tracker.log({CURVES: trackio.Image(pixels, caption="loss and accuracy per epoch")}, step=step)
