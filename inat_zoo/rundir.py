"""The run directory: the one module that knows its layout, reads and writes its files, and says whether a run may
start or resume there.

Layout of ``<run>/`` (every other module asks this one for a path or a file's content)::

    recipe.yaml                 the resolved recipe, written first by the trainer
    history.jsonl               one JSON record per finished epoch
    model/                      timm ``save_for_hf`` folder of the best epoch (validation accuracy)
    checkpoints/checkpoint_N/   accelerate state after N optimizer updates; trainer_state.json written last
    metrics.json                written last: the validation and test results of the kept model
    eval/, eval_<split>/        ``inat-zoo evaluate`` (metrics.json, three figures, per_class.csv)
    explain/, explain_images/   ``inat-zoo explain`` pictures (of test images / of the user's own --image files)
    tracking/                   the trackers' local stores (track.backend): tensorboard/ (event files),
                                mlflow/ (mlflow.db, artifacts/), trackio/ (its TRACKIO_DIR); W&B writes wandb/
    .train.lock                 held by the training writing into the folder

Readers are strict: a malformed file is one :class:`~inat_zoo.errors.UsageError` naming it. Writers are atomic
(:mod:`inat_zoo.atomic`), so a kill never leaves a half-written file. This module imports nothing of the project
above :mod:`inat_zoo.atomic` and :mod:`inat_zoo.errors`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from .atomic import atomic_write_json, atomic_write_text
from .errors import UsageError

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"
LOCK_FILE = ".train.lock"  # held (lockf) by the training writing into the run directory
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks the checkpoint complete
EVAL_FOLDER = "eval"
EVAL_FILES = (METRICS_FILE, "confusion_matrix.png", "predictions_grid.png", "per_class.csv", "top_losses.png")
PUBLISHED_EVAL_METRICS_FILE = f"{EVAL_FOLDER}_{METRICS_FILE}"  # eval/metrics.json in a published (Hub) folder
EXPLAIN_FOLDER = "explain"
# pictures of the user's own --image files: beside the run's explain/ pictures, never instead of them, and not
# published by `push` (which shows explain/, made from test images)
EXPLAIN_IMAGES_FOLDER = "explain_images"
EXPLAIN_FILES = ("filters.png", "guided_backprop.png", "gradcam.png", "integrated_gradients.png")
TRACKING_FOLDER = "tracking"
TRACKER_FOLDERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}
MLFLOW_DB = "mlflow.db"  # MLflow's SQLite tracking store, inside the mlflow folder (never the current directory)
MLFLOW_ARTIFACTS = "artifacts"  # the MLflow experiment's artifact location, next to its database
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")
# recipe keys that may change between a run and its resumption (they do not change what is computed)
_RESUMABLE_CHANGES = ("resume", "data.num_workers", "track.", "train.eval_batch_size", "train.keep_checkpoints")


# ------------------------------------------------------------------------------------------------------ paths
def eval_folder(split: str = "test") -> str:
    """The folder name of ``inat-zoo evaluate`` results: ``eval`` for the test split, ``eval_<split>`` otherwise."""
    return EVAL_FOLDER if split == "test" else f"{EVAL_FOLDER}_{split}"


def tracking_dir(run_dir: str | os.PathLike, backend: str) -> Path:
    """``<run>/tracking/<backend>``: where a tracker (tensorboard, mlflow, trackio) keeps its local store."""
    return Path(run_dir) / TRACKING_FOLDER / TRACKER_FOLDERS[backend]


def checkpoint_path(run_dir: str | os.PathLike, update: int, *, partial: bool = False) -> Path:
    """``checkpoints/checkpoint_<update>``, or the hidden ``.checkpoint_<update>.partial`` it is written into."""
    name = f".checkpoint_{update}.partial" if partial else f"checkpoint_{update}"
    return Path(run_dir) / CHECKPOINTS / name


def partial_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints a killed training left half-written (never trusted, removed by the next start)."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob(".checkpoint_*.partial"))


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoints (renamed into place, state file present), oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def is_run_dir(path: str | os.PathLike) -> bool:
    """A folder with recipe.yaml and metrics.json (or history.jsonl: a run still training or stopped early)."""
    path = Path(path)
    return (path / RECIPE_FILE).is_file() and ((path / METRICS_FILE).is_file() or (path / HISTORY_FILE).is_file())


# ---------------------------------------------------------------------------------------------------- readers
def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; a missing or malformed file -> UsageError ``cannot read PATH: ...``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e


def read_yaml_mapping(path: str | os.PathLike, what: str, expected: str) -> dict:
    """The mapping in a YAML file (``{}`` when empty); ``what`` ("recipe file") and ``expected`` name it in errors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"{what} {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {str(path)!r} must hold {expected}, got {type(data).__name__}")
    return data


def read_recipe(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's resolved recipe (``{}`` for an empty file).

    Raises UsageError when recipe.yaml is missing, is not YAML, or holds something other than a mapping.
    """
    return read_yaml_mapping(Path(run_dir) / RECIPE_FILE, "run recipe", "a recipe mapping")


def read_metrics(run_dir: str | os.PathLike, folder: str | None = None) -> dict[str, Any] | None:
    """metrics.json of the run (or of its ``folder``, e.g. ``eval``); None when absent, UsageError when malformed."""
    path = Path(run_dir) / folder / METRICS_FILE if folder else Path(run_dir) / METRICS_FILE
    return read_json(path) if path.is_file() else None


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """history.jsonl, one record per finished epoch, oldest first (``[]`` when the run has none yet).

    Raises UsageError ``PATH:LINE: not a JSON line (...)`` for a malformed line.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: not a JSON line ({e.msg})") from e
    return records


def read_checkpoint_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The trainer state saved in a committed checkpoint (its STATE_FILE)."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def exported_epoch(run_dir: str | os.PathLike) -> int | None:
    """The epoch whose model model/ holds (its config.json ``inat_zoo.epoch``); None before the first export."""
    path = Path(run_dir) / MODEL_DIR / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("inat_zoo", {}).get("epoch")


# ------------------------------------------------------------------------------------------------ run status
def run_status(metrics: dict[str, Any] | None) -> str:
    """How a run ended, from its metrics.json: ``complete`` (all ``train.epochs`` ran), ``stopped early (epoch N)``
    (its ``early_stopping`` block), or ``incomplete`` (no metrics.json: still training, or killed)."""
    if metrics is None:
        return "incomplete"
    stop = metrics.get("early_stopping")
    return f"stopped early (epoch {stop['stopped_epoch']})" if stop else "complete"


def is_finished_status(status: str) -> bool:
    """Whether a :func:`run_status` (or a sweep trial's ``complete``) is of a run that wrote its results."""
    return status == "complete" or status.startswith("stopped early")


# ------------------------------------------------------------------------------------------ the test metrics
def trainer_test_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Training's final test pass (metrics.json ``test``: :func:`inat_zoo.evaluate.evaluate_split`'s result), or
    ``{}`` for a run without one."""
    return (metrics or {}).get("test") or {}


def evaluate_test_metrics(eval_metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """``inat-zoo evaluate``'s result (eval/metrics.json) when it is of the test split and has an accuracy."""
    ev = eval_metrics
    return ev if ev and ev.get("split", "test") == "test" and ev.get("accuracy") is not None else None


def published_test_accuracy(
    metrics: dict[str, Any] | None, eval_metrics: dict[str, Any] | None = None
) -> float | None:
    """The published test accuracy (0..1): the trainer's (metrics.json ``test``), else that of ``inat-zoo evaluate``
    on the test split; None when neither has one."""
    test = trainer_test_metrics(metrics)
    if test.get("accuracy") is not None:
        return test["accuracy"]
    return (evaluate_test_metrics(eval_metrics) or {}).get("accuracy")


# ---------------------------------------------------------------------------------------------------- writers
def write_recipe(run_dir: str | os.PathLike, text: str) -> Path:
    """Write recipe.yaml (``text``: the YAML of the resolved recipe) atomically."""
    return atomic_write_text(Path(run_dir) / RECIPE_FILE, text)


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write metrics.json atomically (into a run, or into an eval/ folder being built)."""
    return atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


def write_history(run_dir: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Replace history.jsonl with ``records``, one JSON line each, atomically."""
    return atomic_write_text(Path(run_dir) / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in records))


def write_checkpoint_state(checkpoint: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write the trainer state into a checkpoint being built: the last file, so its presence marks it complete."""
    return atomic_write_json(Path(checkpoint) / STATE_FILE, state)


def forget_history(run_dir: str | os.PathLike) -> None:
    """Remove history.jsonl (a start that stopped before its first checkpoint: its epochs are not resumed)."""
    (Path(run_dir) / HISTORY_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- start and resume
def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted recipe keys whose values differ between a run's recipe and a resumption's, the resumable ones aside."""
    keys = []
    for key in sorted(set(old) | set(new)):
        full = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and full not in ("model.args", "data.augment"):
            keys += recipe_differences(a, b, f"{full}.")
        elif a != b and not any(full == k or (k.endswith(".") and full.startswith(k)) for k in _RESUMABLE_CHANGES):
            keys.append(full)
    return keys


def run_files(out: Path) -> list[Path]:
    """What a run directory holds, the lock file aside (it outlives the process that took it)."""
    return [p for p in out.iterdir() if p.name != LOCK_FILE]


def stopped_before_first_checkpoint(out: Path) -> bool:
    """A start that died before its first checkpoint (a crash, Ctrl-C, SIGKILL in epoch 1) leaves recipe.yaml and
    perhaps history.jsonl, but nothing a finished epoch writes (a checkpoint, model/, metrics.json)."""
    return (
        (out / RECIPE_FILE).is_file()
        and not complete_checkpoints(out)
        and not (out / MODEL_DIR).exists()
        and not (out / METRICS_FILE).exists()
    )


def in_use(out: Path) -> bool:
    """Whether a running training holds the run directory's lock (the kernel drops it when that process dies)."""
    try:
        with open(out / LOCK_FILE, "rb") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # EACCES or EAGAIN: another process holds it
                return True
    except FileNotFoundError:
        return False
    return False


def lock_run_directory(out: Path) -> IO[bytes]:
    """Take the run directory's lock for this process (main process only); the open file holds it until closed.

    A POSIX record lock (``lockf``), not ``flock``: DataLoader workers fork from this process, and a ``flock`` lock
    belongs to the open file they inherit, so it would outlive a SIGKILLed trainer until its workers notice and exit,
    blocking the ``resume=true`` that follows. A record lock belongs to this process alone and dies with it.
    Raises UsageError when another running training holds it.
    """
    f = open(out / LOCK_FILE, "a+b")  # noqa: SIM115  (held for the whole run, closed by the caller)
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"output_dir {str(out)!r} is in use by another running training") from None
    return f


def check_run_directory(recipe: dict) -> Path | None:
    """Refuse to overwrite a run; with ``resume`` return the checkpoint to continue from (None: start afresh).

    A folder where an earlier start stopped before its first checkpoint holds nothing to resume or to protect: the
    next start, with or without ``resume``, begins afresh there (so a crash in epoch 1 never blocks the rerun). A
    folder a running training holds is refused. Only reads: every process of a launch calls it. Raises UsageError.
    """
    out = Path(recipe["output_dir"])
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {str(out)!r} exists and is not a directory")
    if not out.exists() or not run_files(out):
        return None
    if in_use(out):
        raise UsageError(f"output_dir {str(out)!r} is in use by another running training")
    if stopped_before_first_checkpoint(out):
        return None
    if not recipe["resume"]:
        raise UsageError(
            f"output_dir {str(out)!r} already holds a run; "
            "pass resume=true to continue it or choose another output_dir"
        )
    if not (out / RECIPE_FILE).is_file():  # the trainer writes recipe.yaml first: without it this is not a run
        raise UsageError(f"cannot resume {str(out)!r}: it holds no {RECIPE_FILE}, so it is not a run directory")
    changed = recipe_differences(read_recipe(out), recipe)
    if changed:
        raise UsageError(
            f"cannot resume {str(out)!r}: the recipe differs from its {RECIPE_FILE} in {', '.join(changed)}"
        )
    checkpoints = complete_checkpoints(out)
    return checkpoints[-1] if checkpoints else None


@dataclass
class RunFiles:
    """What a run directory holds for publishing, read and checked once by :func:`inat_zoo.hub.read_run`; the model
    card is written from it."""

    run_dir: Path
    model_dir: Path
    config: dict[str, Any]
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_metrics: dict[str, Any] | None = None
    eval_images: list[Path] = field(default_factory=list)
    explain_images: list[Path] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        """The class names in label order (``config.json``'s ``label_names``)."""
        return list(self.config["label_names"])
