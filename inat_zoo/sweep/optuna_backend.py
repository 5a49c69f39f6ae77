"""The offline backend: a sweep file run with Optuna by one or several workers sharing one study.

TPE (multivariate) for ``bayes``, Hyperband pruning fed with the per-epoch metric, and a storage every worker of
the sweep shares (:mod:`.storage`: the journal file in the sweep folder by default, or a database): a killed sweep
resumes, finished trials count toward ``--trials`` across all workers (:mod:`.budget`), and a trial whose worker
died is run again in its own folder from its last checkpoint (:mod:`.liveness`). Each worker loops: fail the
trials of dead workers, claim a slot, train one trial, until the study holds ``--trials`` finished trials. The
sweep folder's record (:data:`SWEEP_RECORD`) is known here only; the report asks this module.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..config import load_recipe
from ..errors import UsageError
from ..rundir import read_history
from .budget import backoff_s, claim_holds, count_slots, withdraw
from .liveness import fail_dead_trials, worker_lease, worker_name
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
from .storage import StorageSpec, open_storage, parse_storage

SWEEP_RECORD = "sweep.yaml"
DEFAULT_TRIALS = 10
POLL_S = 1.0  # how often a worker waiting for a slot looks at the storage again


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


def decode_params(params: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A trial's stored parameters as the recipe values they set (mappings and lists come back from their JSON).

    Args:
        params: ``FrozenTrial.params`` as the storage holds them.
        space: the sweep's search space (``parameters`` of its record), ``{dotted key: W&B spec}``.
    """
    decoded = {}
    for key, value in params.items():
        spec = space.get(key) or {}
        choices = {_encode(v): v for v in spec.get("values", [])} if spec.get("distribution") == "categorical" else {}
        decoded[key] = copy.deepcopy(choices.get(value, value))
    return decoded


# --------------------------------------------------------------------------------------------------- optuna
def _record_sweep(
    out: Path, sweep: Sweep, space: Mapping[str, Any], overrides: Sequence[str], storage: StorageSpec
) -> None:
    """Write DIR/sweep.yaml (what ran, and where its study is); a resume with a different search space is refused.

    A database URL is recorded with its password hidden: ``inat-zoo report DIR`` then asks for ``--storage``.
    """
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
    if storage.kind != "journal":
        record["storage"] = storage.shown
    path = out / SWEEP_RECORD
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key in ("name", "method", "metric", "parameters"):
            if old.get(key) != record[key]:
                raise UsageError(
                    f"sweep folder {str(out)!r} holds another sweep: {_difference(key, old.get(key), record[key])} "
                    f"({path}); resume it with the same sweep file and overrides, or choose another --out"
                )
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))


def _difference(key: str, old: Any, new: Any) -> str:
    """What differs between a recorded sweep's ``key`` and this one's, for an error message: the parameter names
    (a ``key=value`` override pins a swept key, so it leaves the search space) or the two values."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        pinned = any((k in old) != (k in new) for k in keys)
        hint = " (searched in one, fixed by a key=value override in the other)" if pinned else ""
        return f"its {key} {'differ' if key == 'parameters' else 'differs'} in {', '.join(keys)}{hint}"
    return f"its {key} differs ({old!r} there, {new!r} here)"


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
        # constant_liar: a trial other workers are running counts as a poor result, so TPE samples elsewhere
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)


def open_study(
    out: str | os.PathLike, study_name: str | None = None, storage: str | StorageSpec | None = None, **kwargs: Any
):
    """The Optuna study of a sweep: in the sweep folder's journal, or in ``storage`` (a URL, see :mod:`.storage`).

    Args:
        out: the sweep folder (its journal is the storage when ``storage`` is None).
        study_name: the study; None opens the only study the storage holds.
        storage: a database URL or a checked :class:`StorageSpec`; None for the journal in ``out``.
        kwargs: given, the study is created when missing (``optuna.create_study``'s arguments); else only loaded.

    Raises:
        UsageError: a bad or unreachable storage, several studies and no name, or no study of that name.
    """
    import optuna

    spec = storage if isinstance(storage, StorageSpec) else parse_storage(storage, out)
    backend = open_storage(spec)
    if study_name is None:
        names = optuna.get_all_study_names(backend)
        if len(names) != 1:
            raise UsageError(f"{spec.shown} holds {len(names)} studies ({', '.join(names)}); name the one to open")
        study_name = names[0]
    if kwargs:
        return optuna.create_study(study_name=study_name, storage=backend, load_if_exists=True, **kwargs)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        raise UsageError(f"{spec.shown} holds no study named {study_name!r}") from None


def _check_study_record(study: Any, sweep: Sweep, space: Mapping[str, Any]) -> None:
    """The study records what it searches: workers on other machines (other sweep folders) must search the same."""
    record = json.loads(json.dumps({"method": sweep.method, "metric": sweep.metric, "parameters": dict(space)}))
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", record)  # two first workers racing write the same value
        return
    for key, value in record.items():
        if stored.get(key) != value:
            raise UsageError(
                f"study {study.study_name!r} searches another sweep: {_difference(key, stored.get(key), value)}; "
                "join it with the same sweep file and overrides, or give the sweep another name"
            )


def sampler_seed(sweep_seed: int, worker: str) -> int:
    """The sampler seed of one worker: the sweep's seed mixed with the worker's unique name (32 bits).

    Every worker of a study shares its trials, but each samples with its own random generator: with the sweep seed
    alone, workers started together would propose the same random start-up trials, and a resumed sweep would
    replay its first session's draws. The worker part (host, process id, a random token) makes each stream new;
    the price is that which trial a sweep samples is not reproducible (each trial's recipe is recorded instead).
    """
    digest = hashlib.sha256(f"{sweep_seed}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


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


@dataclass
class OptunaPlan:
    """A checked offline sweep: what every worker (and the launcher of several) needs, found before any write."""

    sweep: Sweep
    overrides: list[str]
    space: dict[str, dict[str, Any]]
    base: dict
    budget: int
    storage: StorageSpec
    out: Path


def plan_optuna(
    sweep: Sweep, overrides: Sequence[str], trials: int | None, out: str | os.PathLike, storage: str | None = None
) -> OptunaPlan:
    """Check everything a sweep run could trip over (search space, recipes, budget, storage URL); writes nothing.

    Raises:
        UsageError: a sweep the optuna backend cannot run, a recipe a swept value breaks, a bad ``--trials``, a bad
            storage URL or a missing database driver.
    """
    spec = parse_storage(storage, out)  # first: it is quick, and the checks below take seconds
    space = _offline_space(sweep, overrides)
    base = load_recipe(sweep.recipe, overrides)
    check_space(sweep, space, overrides)
    budget = _trials_to_reach(sweep, space, trials)
    return OptunaPlan(sweep, list(overrides), space, base, budget, spec, Path(out))


def open_sweep_study(plan: OptunaPlan, worker: str) -> Any:
    """Create or join the plan's study, and write (or check) the sweep folder's record: a sweep's first writes.

    A database is opened before the sweep folder is made, so an unreachable one leaves nothing behind.
    Raises :class:`UsageError` when the folder or the study holds a sweep with another search space.
    """
    sweep, on_journal = plan.sweep, plan.storage.kind == "journal"
    if on_journal:  # the journal lives in the folder; its record is checked before the journal is touched
        plan.out.mkdir(parents=True, exist_ok=True)
        _record_sweep(plan.out, sweep, plan.space, plan.overrides, plan.storage)
    study = open_study(
        plan.out,
        sweep.name,
        plan.storage,
        direction=sweep.direction,
        sampler=make_sampler(sweep, plan.space, sampler_seed(plan.base["seed"], worker)),
        pruner=make_pruner(sweep, plan.base["train"]["epochs"]),
    )
    _check_study_record(study, sweep, plan.space)
    if not on_journal:
        plan.out.mkdir(parents=True, exist_ok=True)
        _record_sweep(plan.out, sweep, plan.space, plan.overrides, plan.storage)
    return study


class ClaimWithdrawn(Exception):
    """Raised in a trial that lost the race for the last slot of the budget (see :mod:`.budget`); never trained."""


class TrialRunner:
    """Optuna's objective for one worker: claim the trial's slot, train it in its run folder, return its metric."""

    def __init__(self, plan: OptunaPlan, worker: str) -> None:
        self.plan = plan
        self.worker = worker
        self.withdrawn = False  # whether the last call gave its slot back

    def __call__(self, trial: Any) -> float:
        from ..train import train

        plan, sweep = self.plan, self.plan.sweep
        trial.set_user_attr("worker", self.worker)  # first: the journal's dead-worker rule reads it
        self.withdrawn = not claim_holds(trial.study, plan.budget)
        if self.withdrawn:
            withdraw(trial.study, trial)
            raise ClaimWithdrawn(f"trial {trial.number}: the budget of {plan.budget} trials is taken")
        params = suggest_all(trial, plan.space)
        resume = "run_dir" in trial.user_attrs  # only the retry of a dead or interrupted trial carries one
        run_name = trial.user_attrs.get("run_dir") or f"trial_{trial.number}"  # numbers are unique in the storage
        trial.set_user_attr("run_dir", run_name)
        run_dir = plan.out / run_name
        # a retried trial continues in its folder (from its last complete checkpoint, if any)
        recipe = trial_recipe(sweep, params, plan.overrides, run_dir, resume=resume)
        try:
            metrics = train(recipe, epoch_callback=epoch_reporter(trial, sweep.metric, recipe["train"]["epochs"]))
        except KeyboardInterrupt:  # optuna records FAIL; the retry queued here resumes it in a later session
            trial.set_user_attr("interrupted", True)
            retry = {"run_dir": run_name, "retry_of": trial.number}
            trial.study.enqueue_trial(dict(trial.params), user_attrs=retry)
            raise
        finally:
            release_memory()
        # what `inat-zoo report` shows of a trial whose run folder is on another machine
        for key in ("model", "freeze", "params", "trainable_params", "best_epoch", "epochs", "train_time_s"):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("val_accuracy", metrics["validation"]["accuracy"])
        trial.set_user_attr("test_accuracy", metrics["test"]["accuracy"])
        # from history.jsonl, not the callback: a resumed trial reports only the epochs after its checkpoint
        return _best_value([r[sweep.metric] for r in read_history(run_dir)], sweep.goal)


def work_until_budget(plan: OptunaPlan, study: Any, runner: TrialRunner) -> None:
    """Claim and run trials until the study holds ``plan.budget`` finished ones, whichever workers finished them.

    Each round first fails the trials of dead workers (they are queued again, see :mod:`.liveness`), then follows
    the budget rule of :mod:`.budget`: wait while live workers hold every open slot, claim-then-check otherwise.
    """
    rng = random.Random(runner.worker)
    attempts = 0
    while True:
        retried = fail_dead_trials(study, plan.storage, plan.out)
        if retried:
            print(f"sweep: trials {', '.join(map(str, retried))} were cut off by a stopped process; running again")
        slots = count_slots(study)
        if slots.finished >= plan.budget:
            return
        if slots.taken >= plan.budget:  # the open slots are held by live workers: wait until one ends or dies
            time.sleep(POLL_S)
            continue
        study.optimize(runner, n_trials=1, gc_after_trial=True, catch=(ClaimWithdrawn,))
        attempts = attempts + 1 if runner.withdrawn else 0
        if attempts:
            time.sleep(backoff_s(attempts, rng))


def run_optuna(
    sweep: Sweep, overrides: Sequence[str], trials: int | None, out: str | os.PathLike, storage: str | None = None
) -> Any:
    """Run one worker of the sweep (or resume it) until ``trials`` trials have finished (completed or pruned).

    Several workers, in several processes or on several machines, may run the same sweep at once: they share the
    study in ``storage`` (None: the journal in ``out``) and its budget. Returns the ``optuna.Study``.

    Raises:
        UsageError: see :func:`plan_optuna` and :func:`open_sweep_study`.
    """
    plan = plan_optuna(sweep, overrides, trials, out, storage)
    worker = worker_name()
    study = open_sweep_study(plan, worker)
    with worker_lease(plan.out, worker):
        finished = count_slots(study).finished
        if finished >= plan.budget:
            print(f"sweep: {plan.out} already has {finished} finished trials (--trials {plan.budget})")
            return study
        work_until_budget(plan, study, TrialRunner(plan, worker))
    print_summary(study, sweep, plan.out)
    return study


def print_summary(study, sweep: Sweep, out: Path) -> None:
    """Print the finished trials of the study (all workers') and its best trial."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    print(f"sweep: {_finished(study)} finished trials in {out} ({len(complete)} complete)")
    if complete:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"sweep: best {best.user_attrs.get('run_dir')} {sweep.metric}={best.value:.4f} ({params})")
    print(f"sweep: compare the trials with `inat-zoo report {out}`")
