"""Hyperparameter sweeps over recipe keys: W&B sweeps online, the same sweep file offline with Optuna.

A sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters``, ``early_terminate``) whose
parameter names are dotted recipe keys (``model.args.filters``, ``train.lr``), plus ``recipe:`` (our extension)
naming the base recipe. One file serves both backends:

- ``wandb``: ``wandb.sweep`` + ``wandb.agent``; each agent run reads ``wandb.config`` into the recipe and trains.
  W&B sweeps need the W&B server and a login, so offline modes are refused up front instead of hanging.
- ``optuna``: fully offline. TPE (multivariate) for ``bayes``, Hyperband pruning fed with the per-epoch metric,
  and a journal file in the sweep folder so a killed sweep resumes: finished trials count toward ``--trials``,
  and a trial that was running when the process died is run again in its own folder (from its last checkpoint).

Every trial is a real run directory written by :func:`inat_zoo.train.train`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import gc
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .config import (
    apply_overrides,
    keys_overlap,
    load_recipe,
    parse_override,
    read_recipe_file,
    read_yaml_mapping,
    set_dotted_key,
    validate_recipe,
)
from .errors import UsageError

SWEEP_KEYS = (
    "name",
    "description",
    "recipe",
    "program",
    "command",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "project",
    "entity",
)
METHODS = ("bayes", "random", "grid")
# Metrics the trainer reports every epoch (history.jsonl); the test split is never a sweep target.
METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
# W&B distributions the Optuna backend maps exactly (others are passed to W&B but refused offline).
OPTUNA_DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "log_uniform",
    "q_log_uniform_values",
)
WANDB_ONLY_DISTRIBUTIONS = (
    "q_log_uniform",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
    "log_beta",
    "q_log_beta",
)
JOURNAL = "optuna_journal.log"
SWEEP_RECORD = "sweep.yaml"
LOCK = ".sweep.lock"
DEFAULT_TRIALS = 10
# Keys the sweep owns in every trial's recipe.
_SWEEP_OWNED = ("output_dir", "resume")
# ... and those the W&B backend sets in every trial (each agent run logs to W&B).
_WANDB_OWNED = ("track.wandb", "track.mode", "track.project")


# ------------------------------------------------------------------------------------------------ sweep files
@dataclass
class Sweep:
    """A parsed sweep file; ``parameters`` maps each dotted recipe key to a normalised W&B parameter spec."""

    path: Path
    name: str
    method: str
    metric: str
    goal: str
    parameters: dict[str, dict[str, Any]]
    early_terminate: dict[str, Any] | None
    recipe: Path
    raw: dict[str, Any] = field(repr=False)

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(where: str, v: Any) -> float | int:
    if isinstance(v, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        with contextlib.suppress(ValueError):
            v = float(v)
    if not _is_number(v):
        raise UsageError(f"{where} must be a number, got {v!r}")
    return v


def normalize_parameter(where: str, spec: Any) -> dict[str, Any]:
    """One W&B parameter spec -> ``{"distribution": ..., ...}`` with W&B's defaults made explicit."""
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where} must be a mapping such as {{values: [...]}} or {{min: .., max: ..}}, got {spec!r}")
    spec = dict(spec)
    if "value" in spec:
        return {"distribution": "constant", "value": spec["value"]}
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}.values must be a non-empty list, got {values!r}")
        out = {"distribution": "categorical", "values": values}
        if "probabilities" in spec:
            out["probabilities"] = spec["probabilities"]
        return out
    if "min" not in spec or "max" not in spec:
        raise UsageError(f"{where} needs `value`, `values`, or `min` and `max` (W&B sweep format)")
    low, high = _number(f"{where}.min", spec["min"]), _number(f"{where}.max", spec["max"])
    dist = spec.get("distribution") or ("int_uniform" if _is_int(low) and _is_int(high) else "uniform")
    known = OPTUNA_DISTRIBUTIONS + WANDB_ONLY_DISTRIBUTIONS
    if dist not in known or dist in ("constant", "categorical"):
        raise UsageError(
            f"{where}.distribution {dist!r} is not a W&B range distribution; one of: {', '.join(known[2:])}"
        )
    if not low < high:
        raise UsageError(f"{where}: min ({low}) must be below max ({high})")
    if dist == "int_uniform" and not (_is_int(low) and _is_int(high)):
        raise UsageError(f"{where}: int_uniform needs integer min and max, got {low!r} and {high!r}")
    if dist.endswith("log_uniform_values") and low <= 0:
        raise UsageError(f"{where}: {dist} needs min > 0, got {low}")
    out = {"distribution": dist, "min": low, "max": high}
    if dist.startswith("q_"):
        q = _number(f"{where}.q", spec.get("q", 1))
        if q <= 0:
            raise UsageError(f"{where}.q must be > 0, got {q}")
        out["q"] = q
    return out


def flatten_parameters(parameters: Any, prefix: str = "parameters") -> dict[str, dict[str, Any]]:
    """W&B ``parameters`` (flat dotted names, or nested ``{parameters: ...}`` blocks) -> {dotted key: spec}."""
    if not isinstance(parameters, Mapping) or not parameters:
        raise UsageError(f"sweep key {prefix!r} must be a non-empty mapping of recipe keys to parameter specs")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in parameters.items():
        key = f"{prefix}.{name}" if prefix != "parameters" else str(name)
        where = f"parameters.{key}"
        inner = (
            flatten_parameters(spec["parameters"], key)
            if isinstance(spec, Mapping) and "parameters" in spec
            else {key: normalize_parameter(where, spec)}
        )
        for inner_key, inner_spec in inner.items():
            if inner_key in out:  # the same key spelled flat (a.b) and nested ({a: {parameters: {b: ..}}})
                raise UsageError(f"parameter {inner_key!r} is given twice")
            out[inner_key] = inner_spec
    return out


def check_parameters_disjoint(parameters: Mapping[str, Any]) -> None:
    """Refuse a swept section together with a swept key inside it (``model.args`` and ``model.args.dense_size``).

    Whichever is set last wins in the trial's recipe, so the other is recorded with a value the trial did not train.
    """
    keys = sorted(parameters)
    for i, outer in enumerate(keys):
        for inner in keys[i + 1 :]:
            if keys_overlap(outer, inner):
                raise UsageError(
                    f"parameters {outer!r} and {inner!r} overlap: each value of {outer!r} replaces the whole section "
                    f"that holds {inner!r}, so trials would record values they did not train; sweep only one of them"
                )


def _find_upwards(relative: str, start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        if (folder / relative).is_file():
            return folder / relative
    return None


def _resolve_recipe(raw: dict, sweep_path: Path, recipe: str | os.PathLike | None) -> Path:
    """The base recipe: ``--recipe``, else ``recipe:``, else the ``.yaml`` argument of W&B's ``command``.

    A relative path is looked up from the current folder, then from the sweep file's folder and each folder above
    it (sweep files live in ``recipes/sweeps/`` and name ``recipes/x.yaml`` relative to the project root).
    """
    if recipe is None:
        recipe = raw.get("recipe")
    if recipe is None and isinstance(raw.get("command"), list):
        recipe = next((a for a in raw["command"] if isinstance(a, str) and a.endswith((".yaml", ".yml"))), None)
    if recipe is None:
        raise UsageError(f"sweep file {str(sweep_path)!r} names no base recipe: add `recipe: recipes/<name>.yaml`")
    if not isinstance(recipe, (str, os.PathLike)):
        raise UsageError(f"sweep file {str(sweep_path)!r}: `recipe` must be a path, got {recipe!r}")
    path = Path(recipe)
    if path.is_absolute() or path.is_file():
        found = path if path.is_file() else None
    else:
        found = _find_upwards(os.fspath(path), sweep_path.resolve().parent)
    if found is None:
        raise UsageError(f"sweep file {str(sweep_path)!r}: base recipe {os.fspath(recipe)!r} does not exist")
    return found.resolve()


def load_sweep(path: str | os.PathLike, recipe: str | os.PathLike | None = None) -> Sweep:
    """Read and check a sweep file (W&B format + ``recipe:``); every mistake raises :class:`UsageError`."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep file", "a mapping (W&B sweep format)")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise UsageError(f"sweep file {str(path)!r}: unknown key {key!r}; allowed keys: {', '.join(SWEEP_KEYS)}")
    try:
        method = raw.get("method", "bayes")
        if method not in METHODS:
            raise UsageError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
        metric = raw.get("metric") or {"name": "val_accuracy", "goal": "maximize"}
        if not isinstance(metric, Mapping) or not isinstance(metric.get("name"), str):
            raise UsageError(f"`metric` must be a mapping with a `name` (e.g. val_accuracy), got {metric!r}")
        goal = metric.get("goal", "minimize")  # W&B's default
        if goal not in ("maximize", "minimize"):
            raise UsageError(f"`metric.goal` must be maximize or minimize, got {goal!r}")
        parameters = flatten_parameters(raw.get("parameters"))
        check_parameters_disjoint(parameters)
        for key in parameters:
            if key.split(".")[0] in _SWEEP_OWNED:
                raise UsageError(f"parameter {key!r} is set by the sweep itself and cannot be swept")
        early = raw.get("early_terminate")
        if early is not None:
            if not isinstance(early, Mapping) or early.get("type") != "hyperband":
                raise UsageError(f"`early_terminate` must be {{type: hyperband, min_iter: N, eta: N}}, got {early!r}")
            for k in ("min_iter", "max_iter", "eta", "s"):
                if k in early and (not _is_int(early[k]) or early[k] < 1):
                    raise UsageError(f"`early_terminate.{k}` must be a positive integer, got {early[k]!r}")
            if "min_iter" not in early and "max_iter" not in early:
                raise UsageError("`early_terminate` needs min_iter or max_iter (W&B sweep format)")
            early = dict(early)
        if method == "grid":
            ranged = [k for k, p in parameters.items() if p["distribution"] not in ("constant", "categorical")]
            if ranged:
                raise UsageError(
                    f"method grid needs `values` for every parameter; ranges given for {', '.join(ranged)}"
                )
    except UsageError as e:
        raise UsageError(f"sweep file {str(path)!r}: {e}") from None
    name = raw.get("name") or path.stem
    if not isinstance(name, str):
        raise UsageError(f"sweep file {str(path)!r}: `name` must be a string, got {name!r}")
    return Sweep(
        path=path,
        name=name,
        method=method,
        metric=metric["name"],
        goal=goal,
        parameters=parameters,
        early_terminate=early,
        recipe=_resolve_recipe(raw, path, recipe),
        raw=raw,
    )


def pinned_parameters(sweep: Sweep, overrides: Sequence[str]) -> list[str]:
    """Swept keys a command-line override fixes (the key itself or a section above it): they are not searched.

    Raises :class:`UsageError` for an override of a key inside a swept section (``data.augment.hflip=0`` while
    ``data.augment`` is swept): merged into each sampled value, it would make the trial train something other than
    the value recorded for it.
    """
    keys = {".".join(parse_override(o)[0]): o for o in overrides}
    for key, text in keys.items():
        inside = [p for p in sweep.parameters if key.startswith(p + ".")]
        if inside:
            raise UsageError(
                f"override {text!r} sets a key inside the swept parameter {inside[0]!r}, whose sampled values replace "
                f"that whole section: trials would record a {inside[0]} they did not train; fix the whole section "
                f"({inside[0]}={{...}}) or leave the key to the sweep file"
            )
    return [p for p in sweep.parameters if any(keys_overlap(p, k) for k in keys)]


def search_space(sweep: Sweep, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """The sweep's parameters less those the command line pins (see :func:`pinned_parameters`)."""
    pinned = set(pinned_parameters(sweep, overrides))
    return {k: v for k, v in sweep.parameters.items() if k not in pinned}


def announce_pinned(sweep: Sweep, overrides: Sequence[str]) -> None:
    """Say on stderr which swept keys the command line fixes, so a search narrower than the file is no surprise."""
    pinned = pinned_parameters(sweep, overrides)
    if pinned:
        print(f"sweep: not searched, fixed by the command line for every trial: {', '.join(pinned)}", file=sys.stderr)


def to_wandb_config(sweep: Sweep, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The sweep file as W&B expects it: our ``recipe`` key dropped, pinned parameters removed, defaults explicit."""
    config = {k: copy.deepcopy(v) for k, v in sweep.raw.items() if k not in ("recipe", "parameters")}
    config["name"] = sweep.name
    config["method"] = sweep.method
    config["metric"] = {"name": sweep.metric, "goal": sweep.goal}
    params = {}
    for key, spec in search_space(sweep, overrides).items():
        dist = spec["distribution"]
        if dist == "constant":
            params[key] = {"value": spec["value"]}
        elif dist == "categorical":
            params[key] = {k: spec[k] for k in ("values", "probabilities") if k in spec}
        else:
            params[key] = {k: v for k, v in spec.items()}
    if not params:
        raise UsageError(f"sweep file {str(sweep.path)!r}: every parameter is fixed by an override; nothing to search")
    config["parameters"] = params
    return config


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
        if _is_int(low) and _is_int(high) and _is_int(q):
            return trial.suggest_int(key, low, high, step=q)
        return trial.suggest_float(key, low, high, step=q)
    if dist == "log_uniform_values":
        return trial.suggest_float(key, low, high, log=True)
    if dist == "log_uniform":  # W&B: min and max are natural-log exponents
        return trial.suggest_float(key, math.exp(low), math.exp(high), log=True)
    if dist == "q_log_uniform_values":  # Optuna has no step on a log scale: sample, then round like W&B does
        q = spec["q"]
        value = round(trial.suggest_float(key, low, high, log=True) / q) * q
        return int(value) if _is_int(q) else value
    raise UsageError(
        f"parameter {key!r}: distribution {dist!r} runs only on W&B (--backend wandb); "
        f"the optuna backend supports {', '.join(OPTUNA_DISTRIBUTIONS)}"
    )


def suggest_all(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {key: suggest(trial, key, spec) for key, spec in space.items()}


# ------------------------------------------------------------------------------------------------- recipes
def _set_dotted(recipe: dict, key: str, value: Any) -> None:
    set_dotted_key(recipe, key, copy.deepcopy(value), f"parameter {key!r}: recipe key")


def trial_recipe(
    sweep: Sweep, params: Mapping[str, Any], overrides: Sequence[str], output_dir: str | os.PathLike, **extra: Any
) -> dict:
    """Base recipe <- trial parameters <- command-line overrides (they apply to every trial) <- output_dir."""
    recipe = read_recipe_file(sweep.recipe)
    for key, value in params.items():
        _set_dotted(recipe, key, value)
    recipe = apply_overrides(recipe, overrides)
    recipe["output_dir"] = os.fspath(output_dir)
    for key, value in extra.items():
        _set_dotted(recipe, key, value)
    try:
        return validate_recipe(recipe)
    except UsageError as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise UsageError(f"{sweep.recipe} with sweep parameters {shown}: {e}") from None


def check_space(sweep: Sweep, space: Mapping[str, Mapping[str, Any]], overrides: Sequence[str]) -> None:
    """Validate the base recipe with every categorical value and range end, and resolve each against its model
    (the trainer's pre-flight: model arguments, freeze stages, input size), before any trial trains."""
    from .train import preflight

    for key, spec in space.items():
        if spec["distribution"] == "constant":
            candidates = [spec["value"]]
        elif spec["distribution"] == "categorical":
            candidates = spec["values"]
        elif spec["distribution"] == "log_uniform":
            candidates = [math.exp(spec["min"]), math.exp(spec["max"])]
        else:
            candidates = [spec["min"], spec["max"]]
        for value in candidates:
            recipe = trial_recipe(sweep, {key: value}, overrides, "unused")
            try:
                preflight(recipe)
            except UsageError as e:
                raise UsageError(f"{sweep.recipe} with sweep parameter {key}={value!r}: {e}") from None


def _check_overrides(overrides: Sequence[str]) -> None:
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in _SWEEP_OWNED:
            raise UsageError(
                f"override {text!r}: the sweep sets {key} for each trial (use --out for the sweep folder)"
            )


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


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """history.jsonl of a run directory, one record per epoch (empty when the run has none yet)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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


def run_optuna(sweep: Sweep, overrides: Sequence[str], trials: int | None, out: str | os.PathLike) -> Any:
    """Run (or resume) the sweep offline until ``trials`` trials have finished (completed or pruned)."""
    from .train import train

    out = Path(out)
    _check_overrides(overrides)
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
    base = load_recipe(sweep.recipe, overrides)
    check_space(sweep, space, overrides)
    if trials is None:
        trials = sweep.raw.get("run_cap") or DEFAULT_TRIALS
        if sweep.method == "grid":
            trials = math.prod(1 if s["distribution"] == "constant" else len(s["values"]) for s in space.values())
    if not _is_int(trials) or trials < 1:
        raise UsageError(f"--trials must be a positive integer, got {trials!r}")

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
                _release_memory()
            for key in ("params", "trainable_params", "best_epoch", "epochs", "train_time_s"):
                if key in metrics:
                    trial.set_user_attr(key, metrics[key])
            trial.set_user_attr("test_accuracy", metrics["test"]["accuracy"])
            # from history.jsonl, not the callback: a resumed trial reports only the epochs after its checkpoint
            return _best_value([r[sweep.metric] for r in read_history(run_dir)], sweep.goal)

        study.optimize(objective, n_trials=remaining, gc_after_trial=True)
        _print_summary(study, sweep, out)
        return study


def _release_memory() -> None:
    """Trials run one after another in this process: hand the last one's accelerator memory back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _print_summary(study, sweep: Sweep, out: Path) -> None:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    print(f"sweep: {_finished(study)} finished trials in {out} ({len(complete)} complete)")
    if complete:
        best = study.best_trial
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"sweep: best {best.user_attrs.get('run_dir')} {sweep.metric}={best.value:.4f} ({params})")
    print(f"sweep: compare the trials with `inat-zoo report {out}`")


# ---------------------------------------------------------------------------------------------------- wandb
def require_wandb_online() -> None:
    """W&B sweeps need the server and a login; refuse clearly instead of hanging on a prompt or the network."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        raise UsageError(
            f"W&B sweeps need the W&B server, but W&B is {mode or 'disabled'} here (WANDB_MODE/WANDB_DISABLED); "
            "run the same sweep file offline with --backend optuna"
        )
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise UsageError(
            "W&B sweeps need a W&B login: run `wandb login` or set WANDB_API_KEY "
            "(or run the same sweep file offline with --backend optuna)"
        )


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    """A parameter from ``wandb.config``: stored under its dotted name, or nested if W&B nested it."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def run_wandb(
    sweep: Sweep,
    overrides: Sequence[str],
    trials: int | None,
    out: str | os.PathLike,
    *,
    project: str | None = None,
    entity: str | None = None,
) -> str:
    """Create the W&B sweep and run an agent here; each agent run is a trainer run in ``out/<run id>``."""
    _check_overrides(overrides)
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if any(keys_overlap(key, owned) for owned in _WANDB_OWNED):
            raise UsageError(
                f"override {text!r}: the W&B backend sets {', '.join(_WANDB_OWNED)} in every trial "
                "(it logs each one to W&B online; --project names the project)"
            )
    owned = [p for p in sweep.parameters if any(keys_overlap(p, k) for k in _WANDB_OWNED)]
    if owned:
        raise UsageError(f"parameter {owned[0]!r} cannot be swept: the W&B backend sets {', '.join(_WANDB_OWNED)}")
    base = load_recipe(sweep.recipe, overrides)
    config = to_wandb_config(sweep, overrides)
    space = search_space(sweep, overrides)
    announce_pinned(sweep, overrides)
    check_space(sweep, {k: v for k, v in space.items() if v["distribution"] in OPTUNA_DISTRIBUTIONS}, overrides)
    require_wandb_online()
    import wandb

    project = project or sweep.raw.get("project") or base["track"]["project"]
    entity = entity or sweep.raw.get("entity")
    out = Path(out)
    from .train import train

    def run_trial() -> None:
        with wandb.init(dir=os.fspath(out)) as run:
            params = {key: _config_value(run.config, key) for key in space}
            tracking = dict(zip(_WANDB_OWNED, (True, "online", project), strict=True))
            recipe = trial_recipe(sweep, params, overrides, out / run.id, **tracking)
            train(recipe)
        _release_memory()

    out.mkdir(parents=True, exist_ok=True)
    sweep_id = wandb.sweep(config, project=project, entity=entity)
    atomic_write_text(out / "wandb_sweep_id.txt", sweep_id + "\n")
    wandb.agent(sweep_id, function=run_trial, count=trials, project=project, entity=entity)
    return sweep_id


# ------------------------------------------------------------------------------------------------------ CLI
def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("optuna", "wandb"), default="optuna", help="default: optuna (offline)")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: run_cap or 10)")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--recipe", default=None, help="base recipe (default: the sweep file's `recipe:`)")
    parser.add_argument("--project", default=None, help="W&B project (default: the recipe's track.project)")
    parser.add_argument("--entity", default=None, help="W&B entity")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file in W&B format (recipes/sweeps/)")
    _add_options(parser)
    # Options may follow the overrides; argparse cannot interleave a `*` positional, so they are re-read in run_cli.
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="applied to every trial")


def _reparse(parser_cls: type, args: argparse.Namespace) -> argparse.Namespace:
    late = parser_cls(prog="inat-zoo sweep", add_help=False)
    _add_options(late)
    late.add_argument("overrides", nargs="*")
    for action in late._actions:
        action.default = argparse.SUPPRESS
    rest = list(args.overrides)
    del args.overrides  # argparse warns when a positional's dest is already in the namespace
    args = late.parse_intermixed_args(rest, namespace=args)
    if not hasattr(args, "overrides"):
        args.overrides = []
    return args


def run_cli(args: argparse.Namespace) -> int:
    from .cli import _Parser

    args = _reparse(_Parser, args)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"expected key=value overrides after the sweep file, got {' '.join(bad)}")
    sweep = load_sweep(args.sweep_file, recipe=args.recipe)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    if args.backend == "wandb":
        run_wandb(sweep, args.overrides, args.trials, out, project=args.project, entity=args.entity)
    else:
        run_optuna(sweep, args.overrides, args.trials, out)
    return 0
