"""What a sweep's study recorded about its trials, read back for ``inat-zoo report``.

Each worker records a finished trial's results in the study (user attributes set by
:class:`~inat_zoo.sweep.optuna_backend.TrialRunner`), so a report on one machine can list the trials other machines
ran, whose run folders it cannot reach.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import read_yaml_mapping
from ..errors import UsageError
from .budget import WITHDRAWN
from .optuna_backend import SWEEP_RECORD, decode_params
from .storage import JOURNAL


def find_sweeps(
    paths: Sequence[str | os.PathLike], storage: str | None = None
) -> list[tuple[Path | None, dict, str | None]]:
    """(sweep folder, its sweep.yaml record, its study's storage URL or None for its journal) for every Optuna
    sweep folder among ``paths``; with no paths, the study in ``storage`` alone (folder None, empty record).

    Raises:
        UsageError: a sweep folder whose database URL was recorded with its password hidden, and no ``storage``.
    """
    if not paths and storage is not None:
        return [(None, {}, storage)]
    found = []
    for given in map(Path, paths):
        if not (given / SWEEP_RECORD).is_file():
            continue
        record = read_yaml_mapping(given / SWEEP_RECORD, "sweep record", "a mapping")
        url = storage or record.get("storage")
        if url is None and not (given / JOURNAL).is_file():
            continue
        if url is not None and "***" in url:
            raise UsageError(f"the study of {str(given)!r} is in {url}: give its full URL with --storage")
        found.append((given, record, url))
    return found


def latest_trials(study: Any, sweep_dir: Path | None) -> dict[Any, Any]:
    """The latest trial per run folder (a retried trial shares its folder), keyed by the folder's path here, or by
    its name alone when there is no sweep folder; queued and withdrawn trials (they never trained) are left out."""
    latest: dict[Any, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir is None or trial.user_attrs.get(WITHDRAWN) or trial.state.name == "WAITING":
            continue
        latest[(sweep_dir / run_dir).resolve() if sweep_dir is not None else run_dir] = trial
    return latest


def trial_summary(trial: Any, space: Mapping[str, Any], metric: str | None) -> dict[str, Any]:
    """A trial as its study recorded it: status, results, and its parameters decoded into recipe values.

    Args:
        trial: an ``optuna.trial.FrozenTrial``.
        space: the sweep's search space (``{dotted key: W&B spec}``), to decode mapping and list choices.
        metric: the sweep's metric; a pruned trial's best validation accuracy is its best reported epoch.
    """
    attrs = trial.user_attrs
    val = attrs.get("val_accuracy")
    if val is None and metric == "val_accuracy":
        val = max(trial.intermediate_values.values(), default=None)
    return {
        "status": trial.state.name.lower(),
        "model": attrs.get("model"),
        "freeze": attrs.get("freeze"),
        "params": attrs.get("params"),
        "trainable_params": attrs.get("trainable_params"),
        "best_val_acc": val,
        "test_acc": attrs.get("test_accuracy"),
        "epochs": attrs.get("epochs", len(trial.intermediate_values)),
        "best_epoch": attrs.get("best_epoch"),
        "train_time_s": attrs.get("train_time_s"),
        "trial": trial.number,
        "recipe": decode_params(trial.params, space),
    }
