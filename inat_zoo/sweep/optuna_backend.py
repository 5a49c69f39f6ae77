"""The offline backend: a sweep file run with Optuna, resumable from a journal in the sweep folder.

TPE (multivariate) for ``bayes``, Hyperband pruning fed with the per-epoch metric, and a journal file in the sweep
folder so a killed sweep resumes: finished trials count toward ``--trials``, and a trial that was running when the
process died is run again in its own folder (from its last checkpoint). The sweep folder's file names
(:data:`JOURNAL`, :data:`SWEEP_RECORD`, :data:`LOCK`) are known here only; the report asks this module.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..config import load_recipe
from ..errors import UsageError
from ..rundir import read_history
from .spec import (
    METRICS,
    OPTUNA_DISTRIBUTIONS,
    WANDB_ONLY_DISTRIBUTIONS,
    Sweep,
    announce_pinned,
    check_overrides,
    check_space,
    is_int,
    release_memory,
    search_space,
    trial_recipe,
)

JOURNAL = "optuna_journal.log"
SWEEP_RECORD = "sweep.yaml"
LOCK = ".sweep.lock"
DEFAULT_TRIALS = 10


# --------------------------------------------------------------------------------------- optuna search space
def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be None/bool/int/float/str: lists and mappings travel as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def suggest(trial: Any, key: str, spec: Mapping[str, Any]) -> Any:
    """Ask an Optuna trial for one W&B parameter, with the distribution W&B would sample from."""
    dist = spec["distribution"]
    if dist == "constant":
        return copy.deepcopy(spec["value"])
    if dist == "categorical":
        decoded = {_encode(v): v for v in spec["values"]}
        return copy.deepcopy(decoded[trial.suggest_categorical(key, list(decoded))])
    low, high = spec["min"], spec["max"]
    if dist == "int_uniform":
        return trial.suggest_int(key, low, high)
    if dist == "uniform":
        return trial.suggest_float(key, low, high)
    if dist == "q_uniform":
        q = spec["q"]
        if is_int(low) and is_int(high) and is_int(q):
            return trial.suggest_int(key, low, high, step=q)
        return trial.suggest_float(key, low, high, step=q)
    if dist == "log_uniform_values":
        return trial.suggest_float(key, low, high, log=True)
    if dist == "log_uniform":  # W&B: min and max are natural-log exponents
        return trial.suggest_float(key, math.exp(low), math.exp(high), log=True)
    if dist == "q_log_uniform_values":  # Optuna has no step on a log scale: sample, then round like W&B does
        q = spec["q"]
        value = round(trial.suggest_float(key, low, high, log=True) / q) * q
        return int(value) if is_int(q) else value
    raise UsageError(
        f"parameter {key!r}: distribution {dist!r} runs only on W&B (--backend wandb); "
        f"the optuna backend supports {', '.join(OPTUNA_DISTRIBUTIONS)}"
    )


def suggest_all(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One Optuna suggestion per parameter of ``space`` (see :func:`suggest`): ``{dotted key: value}``.

    Raises:
        UsageError: a distribution the optuna backend does not support.
    """
    return {key: suggest(trial, key, spec) for key, spec in space.items()}


# --------------------------------------------------------------------------------------------------- optuna
@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One sweep process per folder: a stale RUNNING trial can then only come from a process that died."""
    with open(out / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"sweep folder {str(out)!r} is in use by another running sweep") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _record_sweep(out: Path, sweep: Sweep, space: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """Write DIR/sweep.yaml (what ran); a resume with a different search space is refused, not mixed in."""
    record = {
        "name": sweep.name,
        "sweep_file": os.fspath(sweep.path.resolve()),
        "recipe": os.fspath(sweep.recipe),
        "method": sweep.method,
        "metric": {"name": sweep.metric, "goal": sweep.goal},
        "early_terminate": sweep.early_terminate,
        "parameters": dict(space),
        "overrides": list(overrides),
    }
    path = out / SWEEP_RECORD
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key in ("name", "method", "metric", "parameters"):
            if old.get(key) != record[key]:
                raise UsageError(
                    f"sweep folder {str(out)!r} holds a sweep with a different {key} ({path}); "
                    "resume it with the same sweep file and overrides, or choose another --out"
                )
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))


def make_pruner(sweep: Sweep, epochs: int):
    """W&B's hyperband early termination as Optuna's HyperbandPruner; one resource unit is one epoch."""
    import optuna

    if sweep.early_terminate is None:
        return optuna.pruners.NopPruner()
    max_resource = int(sweep.early_terminate.get("max_iter", epochs))
    min_resource = min(int(sweep.early_terminate.get("min_iter", 1)), max_resource)
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource, max_resource=max_resource, reduction_factor=int(sweep.early_terminate.get("eta", 3))
    )


def make_sampler(sweep: Sweep, space: Mapping[str, Mapping[str, Any]], seed: int):
    """bayes -> multivariate TPE, random -> RandomSampler, grid -> GridSampler over the encoded values."""
    import optuna

    if sweep.method == "grid":
        grid = {}
        for key, spec in space.items():
            values = [spec["value"]] if spec["distribution"] == "constant" else spec["values"]
            grid[key] = [_encode(v) for v in values]
        return optuna.samplers.GridSampler(grid, seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, seed=seed)


def open_study(out: str | os.PathLike, study_name: str | None = None, **kwargs: Any):
    """The Optuna study stored in a sweep folder's journal (the only name in it unless one is given)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(os.fspath(Path(out) / JOURNAL)))
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise UsageError(f"{out}/{JOURNAL} holds {len(names)} studies ({', '.join(names)}); name the one to open")
        study_name = names[0]
    if kwargs:
        return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, **kwargs)
    return optuna.load_study(study_name=study_name, storage=storage)


def _trial_count(out: Path, study_name: str) -> int:
    if not (out / JOURNAL).is_file():
        return 0
    try:
        return len(open_study(out, study_name).trials)
    except KeyError:  # the journal holds no study of that name yet
        return 0


def retry_stopped_trials(study, out: Path) -> list[int]:
    """Trials a stopped process cut off (left RUNNING by a kill, or FAIL after Ctrl-C): queue their parameters again.

    The retry trains in the same run directory and resumes from its last complete checkpoint when there is one.
    """
    import optuna

    State = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    already = {t.user_attrs.get("retry_of") for t in trials}
    retried = []
    for t in trials:
        interrupted = t.state == State.FAIL and t.user_attrs.get("interrupted")
        if not (t.state == State.RUNNING or interrupted) or t.number in already:
            continue
        run_dir = t.user_attrs.get("run_dir", f"trial_{t.number}")
        if t.state == State.RUNNING:
            study.tell(t.number, state=State.FAIL)
        if (out / run_dir).exists():
            study.enqueue_trial(dict(t.params), user_attrs={"run_dir": run_dir, "retry_of": t.number})
        else:  # it died before writing anything: a fresh trial is as good
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        retried.append(t.number)
    return retried


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _best_value(values: Sequence[float], goal: str) -> float:
    return max(values) if goal == "maximize" else min(values)


def epoch_reporter(
    trial: Any, metric: str, final_epoch: int | None = None
) -> Callable[[int, Mapping[str, Any]], None]:
    """The trainer's ``epoch_callback`` for a trial: report the metric each epoch, raise TrialPruned when told.

    The final epoch is never pruned: its work is done, and completing gives the trial its test metrics.
    """
    import optuna

    def report_epoch(epoch: int, record: Mapping[str, Any]) -> None:
        if metric not in record:
            raise UsageError(f"the trainer reported no {metric!r} (it has {', '.join(record)})")
        trial.report(float(record[metric]), step=int(epoch))  # epochs count from 1: the resource Hyperband spends
        if (final_epoch is None or epoch < final_epoch) and trial.should_prune():
            raise optuna.TrialPruned(f"{metric}={record[metric]:.4f} after epoch {epoch}")

    return report_epoch


def _offline_space(sweep: Sweep, overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The search space the optuna backend samples; raises :class:`UsageError` for what only W&B can run."""
    check_overrides(overrides)
    if sweep.metric not in METRICS:
        raise UsageError(f"sweep file {str(sweep.path)!r}: metric {sweep.metric!r} is not one of {', '.join(METRICS)}")
    space = search_space(sweep, overrides)
    if not space:
        raise UsageError(f"sweep file {str(sweep.path)!r}: every parameter is fixed by an override; nothing to search")
    announce_pinned(sweep, overrides)
    for key, spec in space.items():
        if spec["distribution"] in WANDB_ONLY_DISTRIBUTIONS:
            raise UsageError(
                f"parameter {key!r}: distribution {spec['distribution']!r} runs only on W&B (--backend wandb); "
                f"the optuna backend supports {', '.join(OPTUNA_DISTRIBUTIONS)}"
            )
    return space


def _trials_to_reach(sweep: Sweep, space: Mapping[str, Mapping[str, Any]], trials: int | None) -> int:
    """``--trials``, else the file's ``run_cap``, else :data:`DEFAULT_TRIALS`; a grid's default is its size."""
    if trials is None:
        trials = sweep.raw.get("run_cap") or DEFAULT_TRIALS
        if sweep.method == "grid":
            trials = math.prod(1 if s["distribution"] == "constant" else len(s["values"]) for s in space.values())
    if not is_int(trials) or trials < 1:
        raise UsageError(f"--trials must be a positive integer, got {trials!r}")
    return trials


def _make_objective(
    sweep: Sweep, space: Mapping[str, Mapping[str, Any]], overrides: Sequence[str], out: Path
) -> Callable[[Any], float]:
    """Optuna's objective: train one trial in its run directory and return its best epoch's metric."""
    from ..train import train

    def objective(trial) -> float:
        params = suggest_all(trial, space)
        run_name = trial.user_attrs.get("run_dir") or f"trial_{trial.number}"
        trial.set_user_attr("run_dir", run_name)
        run_dir = out / run_name
        # a retried trial continues in its folder (from its last complete checkpoint, if any)
        recipe = trial_recipe(sweep, params, overrides, run_dir, resume="retry_of" in trial.user_attrs)
        try:
            metrics = train(recipe, epoch_callback=epoch_reporter(trial, sweep.metric, recipe["train"]["epochs"]))
        except KeyboardInterrupt:  # optuna records FAIL; the next session resumes this trial
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            release_memory()
        for key in ("params", "trainable_params", "best_epoch", "epochs", "train_time_s"):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("test_accuracy", metrics["test"]["accuracy"])
        # from history.jsonl, not the callback: a resumed trial reports only the epochs after its checkpoint
        return _best_value([r[sweep.metric] for r in read_history(run_dir)], sweep.goal)

    return objective


def run_optuna(sweep: Sweep, overrides: Sequence[str], trials: int | None, out: str | os.PathLike) -> Any:
    """Run (or resume) the sweep offline until ``trials`` trials have finished (completed or pruned).

    Returns the ``optuna.Study`` stored in ``out``'s journal. Raises :class:`UsageError` for a sweep the optuna
    backend cannot run, a recipe a sampled value breaks, or a sweep folder in use or holding another sweep.
    """
    out = Path(out)
    space = _offline_space(sweep, overrides)
    base = load_recipe(sweep.recipe, overrides)
    check_space(sweep, space, overrides)
    trials = _trials_to_reach(sweep, space, trials)

    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        _record_sweep(out, sweep, space, overrides)
        previous = _trial_count(out, sweep.name)
        study = open_study(
            out,
            sweep.name,
            direction=sweep.direction,
            # a resumed sweep must not replay the random start-up draws of the first session
            sampler=make_sampler(sweep, space, base["seed"] + previous),
            pruner=make_pruner(sweep, base["train"]["epochs"]),
        )
        retried = retry_stopped_trials(study, out)
        if retried:
            print(f"sweep: trials {', '.join(map(str, retried))} were cut off by a stopped process; running again")
        remaining = trials - _finished(study)
        if remaining <= 0:
            print(f"sweep: {out} already has {_finished(study)} finished trials (--trials {trials})")
            return study
        study.optimize(_make_objective(sweep, space, overrides, out), n_trials=remaining, gc_after_trial=True)
        _print_summary(study, sweep, out)
        return study


def _print_summary(study, sweep: Sweep, out: Path) -> None:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    print(f"sweep: {_finished(study)} finished trials in {out} ({len(complete)} complete)")
    if complete:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"sweep: best {best.user_attrs.get('run_dir')} {sweep.metric}={best.value:.4f} ({params})")
    print(f"sweep: compare the trials with `inat-zoo report {out}`")
