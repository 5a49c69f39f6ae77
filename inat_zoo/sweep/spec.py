"""The sweep-file layer: read and check a sweep file, and turn sampled parameters into trial recipes.

A sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters``, ``early_terminate``) whose
parameter names are dotted recipe keys (``model.args.filters``, ``train.lr``), plus ``recipe:`` (our extension)
naming the base recipe. This module knows that format and what every trial shares, whichever backend samples it
(:mod:`inat_zoo.sweep.optuna_backend`, :mod:`inat_zoo.sweep.wandb_backend`); it imports neither backend.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    apply_overrides,
    keys_overlap,
    parse_override,
    read_recipe_file,
    read_yaml_mapping,
    set_dotted_key,
    validate_recipe,
)
from ..errors import UsageError

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
# Keys the sweep owns in every trial's recipe.
_SWEEP_OWNED = ("output_dir", "resume")


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
        """The Optuna study direction for ``goal``: ``maximize`` or ``minimize``."""
        return "maximize" if self.goal == "maximize" else "minimize"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """Whether ``v`` is an int and not a bool."""
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
    dist = spec.get("distribution") or ("int_uniform" if is_int(low) and is_int(high) else "uniform")
    known = OPTUNA_DISTRIBUTIONS + WANDB_ONLY_DISTRIBUTIONS
    if dist not in known or dist in ("constant", "categorical"):
        raise UsageError(
            f"{where}.distribution {dist!r} is not a W&B range distribution; one of: {', '.join(known[2:])}"
        )
    if not low < high:
        raise UsageError(f"{where}: min ({low}) must be below max ({high})")
    if dist == "int_uniform" and not (is_int(low) and is_int(high)):
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
                if k in early and (not is_int(early[k]) or early[k] < 1):
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
    from ..train import preflight

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


def check_overrides(overrides: Sequence[str]) -> None:
    """Reject ``key=value`` overrides of keys the sweep sets per trial.

    Raises:
        UsageError: an override of a sweep-owned key (e.g. ``output_dir``), or one that does not parse.
    """
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in _SWEEP_OWNED:
            raise UsageError(
                f"override {text!r}: the sweep sets {key} for each trial (use --out for the sweep folder)"
            )


def release_memory() -> None:
    """Trials run one after another in this process: hand the last one's accelerator memory back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
