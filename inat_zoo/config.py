"""Training recipes: the schema, YAML loading, dotted ``key=value`` overrides and validation.

This module is the single source of truth for recipe keys and their defaults (``DEFAULTS``). Every user mistake
(a typo in a key, a wrong type, an unknown model, a malformed override) raises :class:`UsageError` naming the key
and, for a typo, the allowed keys and the closest match, before anything is written anywhere.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

# Keys whose value is a free-form mapping handed to another library (timm kwargs, the augment mapping).
_FREE_MAPPINGS = {"model.args", "data.augment"}

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "output_dir": None,  # runs/<recipe file stem> when loaded from a file
    "resume": False,
    "model": {
        "name": "inat_flexible_cnn",
        "args": {},
        "pretrained": False,
        "freeze": "none",
        "unfreeze": [],
    },
    "data": {
        "root": None,  # <default cache>/inaturalist_12K
        "image_size": None,
        "val_fraction": 0.2,
        "strict": False,
        "num_workers": 2,
        "prepared_cache": False,
        "augment": {},
    },
    "train": {
        "epochs": 10,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 1.0e-3,
        "weight_decay": 0.05,
        "scheduler": "cosine",
        "warmup_epochs": 0,
        "warmup_lr": 1.0e-6,
        "min_lr": 0.0,
        "decay_epochs": None,
        "decay_rate": 0.1,
        "layer_decay": None,
        "label_smoothing": 0.0,
        "grad_accum_steps": 1,
        "clip_grad": None,
        "mixed_precision": None,
        "channels_last": False,
        "compile": False,
        "ema": False,
        "head_feature_cache": "auto",
        "checkpoint_every_steps": None,
        "keep_checkpoints": 2,
        "eval_batch_size": None,
    },
    "track": {
        "wandb": False,
        "project": "inat_zoo",
        "mode": "offline",
        "run_name": None,
    },
}

SCHEDULERS = ("cosine", "step", "none")
MIXED_PRECISION = (None, "no", "bf16", "fp16")
TRACK_MODES = ("online", "offline", "disabled")
HEAD_FEATURE_CACHE = ("auto", True, False)


# ---------------------------------------------------------------------------------------------- value checkers
def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"recipe key {key!r} must be true or false, got {v!r} ({_type_name(v)})")
    return v


def _int(minimum: int | None = None, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise UsageError(f"recipe key {key!r} must be an integer, got {v!r} ({_type_name(v)})")
        if minimum is not None and v < minimum:
            raise UsageError(f"recipe key {key!r} must be >= {minimum}, got {v}")
        return v

    return check


def _float(low: float | None = None, high: float | None = None, optional: bool = False, open_low=False):
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, str):  # YAML 1.1 reads `1e-3` (no dot) as a string: accept what is plainly a number
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UsageError(f"recipe key {key!r} must be a number, got {v!r} ({_type_name(v)})")
        v = float(v)
        if low is not None and (v <= low if open_low else v < low):
            raise UsageError(f"recipe key {key!r} must be {'>' if open_low else '>='} {low}, got {v}")
        if high is not None and v > high:
            raise UsageError(f"recipe key {key!r} must be <= {high}, got {v}")
        return v

    return check


def _str(optional: bool = False, choices: Sequence[Any] | None = None) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and (optional or (choices is not None and None in choices)):
            return None
        if choices is not None and v not in choices:
            shown = ", ".join("null" if c is None else str(c).lower() for c in choices)
            raise UsageError(f"recipe key {key!r} must be one of: {shown}; got {v!r}")
        if not isinstance(v, str) and choices is None:
            raise UsageError(f"recipe key {key!r} must be a string, got {v!r} ({_type_name(v)})")
        return v

    return check


_mixed_precision_choice = _str(choices=MIXED_PRECISION)


def _mixed_precision(key: str, v: Any) -> Any:
    # YAML 1.1 reads a bare `no` as false: `mixed_precision: no` (file or key=value) means accelerate's "no"
    return _mixed_precision_choice(key, "no" if v is False else v)


def _path(optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, (str, os.PathLike)):
            raise UsageError(f"recipe key {key!r} must be a path, got {v!r} ({_type_name(v)})")
        return os.fspath(v)

    return check


def _mapping(key: str, v: Any) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise UsageError(f"recipe key {key!r} must be a mapping, got {v!r} ({_type_name(v)})")
    return dict(v)


_FREEZE_RE = re.compile(r"^(none|head|until:\S+)$")


def _freeze(key: str, v: Any) -> str:
    if not isinstance(v, str) or not _FREEZE_RE.match(v):
        raise UsageError(f"recipe key {key!r} must be none, head or until:<stage> (e.g. until:layer3), got {v!r}")
    return v


def _unfreeze(key: str, v: Any) -> list[dict]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise UsageError(f"recipe key {key!r} must be a list of {{epoch: N, stage: NAME}}, got {v!r}")
    out = []
    for i, item in enumerate(v):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"epoch", "stage"}:
            raise UsageError(
                f"recipe key {where!r} must be a mapping with exactly the keys epoch and stage, got {item!r}"
            )
        epoch = _int(minimum=1)(f"{where}.epoch", item["epoch"])
        stage = _str()(f"{where}.stage", item["stage"])
        out.append({"epoch": epoch, "stage": stage})
    return sorted(out, key=lambda d: d["epoch"])


def _ema(key: str, v: Any) -> bool | float:
    if isinstance(v, bool):
        return v
    decay = _float(0.0, 1.0, open_low=True)(key, v)
    if decay >= 1.0:
        raise UsageError(f"recipe key {key!r} must be true, false or a decay in (0, 1), got {v!r}")
    return decay


def _head_cache(key: str, v: Any) -> str | bool:
    if v not in HEAD_FEATURE_CACHE or (not isinstance(v, bool) and v != "auto"):
        raise UsageError(f"recipe key {key!r} must be auto, true or false, got {v!r}")
    return v


def _model_name(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise UsageError(f"recipe key {key!r} must be a timm model name, got {v!r}")
    if v.startswith("hf-hub:"):
        from .hub_ids import parse_hub_id

        return f"hf-hub:{parse_hub_id(v, f'recipe key {key!r}', allow_revision=True)}"
    if v.startswith("local-dir:"):
        return v
    import timm

    from . import models  # noqa: F401  (registers inat_* with timm)

    if not timm.is_model(v):
        close = difflib.get_close_matches(v, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `timm.list_models()` or `inat-zoo models`)"
        raise UsageError(f"recipe key {key!r}: unknown timm model {v!r}{hint}")
    return v


def _optimizer(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise UsageError(f"recipe key {key!r} must be a timm optimizer name, got {v!r}")
    from timm.optim import list_optimizers

    known = list_optimizers()
    if v.lower() not in known:
        close = difflib.get_close_matches(v.lower(), known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `timm.optim.list_optimizers()`)"
        raise UsageError(f"recipe key {key!r}: unknown timm optimizer {v!r}{hint}")
    return v


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "seed": _int(minimum=0),
    "output_dir": _path(optional=True),
    "resume": _bool,
    "model.name": _model_name,
    "model.args": _mapping,
    "model.pretrained": _bool,
    "model.freeze": _freeze,
    "model.unfreeze": _unfreeze,
    "data.root": _path(optional=True),
    "data.image_size": _int(minimum=8, optional=True),
    "data.val_fraction": _float(0.0, 0.9, open_low=True),
    "data.strict": _bool,
    "data.num_workers": _int(minimum=0),
    "data.prepared_cache": _bool,
    "data.augment": _mapping,
    "train.epochs": _int(minimum=1),
    "train.batch_size": _int(minimum=1),
    "train.optimizer": _optimizer,
    "train.lr": _float(0.0, open_low=True),
    "train.weight_decay": _float(0.0),
    "train.scheduler": _str(choices=SCHEDULERS),
    "train.warmup_epochs": _float(0.0),
    "train.warmup_lr": _float(0.0),
    "train.min_lr": _float(0.0),
    "train.decay_epochs": _float(0.0, open_low=True, optional=True),
    "train.decay_rate": _float(0.0, open_low=True),
    "train.layer_decay": _float(0.0, 1.0, open_low=True, optional=True),
    "train.label_smoothing": _float(0.0, 0.99),
    "train.grad_accum_steps": _int(minimum=1),
    "train.clip_grad": _float(0.0, open_low=True, optional=True),
    "train.mixed_precision": _mixed_precision,
    "train.channels_last": _bool,
    "train.compile": _bool,
    "train.ema": _ema,
    "train.head_feature_cache": _head_cache,
    "train.checkpoint_every_steps": _int(minimum=1, optional=True),
    "train.keep_checkpoints": _int(minimum=1),
    "train.eval_batch_size": _int(minimum=1, optional=True),
    "track.wandb": _bool,
    "track.project": _str(),
    "track.mode": _str(choices=TRACK_MODES),
    "track.run_name": _str(optional=True),
}


# ------------------------------------------------------------------------------------------------- validation
def _unknown_key(key: str, allowed: Sequence[str]) -> UsageError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    where = f"in section {parent!r}" if parent else "at the top level"
    return UsageError(f"unknown recipe key {key!r}{hint}; allowed keys {where}: {', '.join(allowed)}")


def _validate_section(values: Any, defaults: dict, prefix: str) -> dict:
    if not isinstance(values, Mapping):
        raise UsageError(f"recipe section {prefix.rstrip('.')!r} must be a mapping, got {values!r}")
    out: dict[str, Any] = {}
    for key in values:
        if not isinstance(key, str) or key not in defaults:
            raise _unknown_key(f"{prefix}{key}", list(defaults))
    for key, default in defaults.items():
        full = f"{prefix}{key}"
        value = values.get(key, copy.deepcopy(default))
        if isinstance(default, dict) and full not in _FREE_MAPPINGS:
            out[key] = _validate_section({} if value is None else value, default, f"{full}.")
        else:
            out[key] = CHECKS[full](full, value)
    return out


def _validate_augment(augment: dict) -> dict:
    from .data.transforms import AUGMENT_DEFAULTS, validate_augment

    for key in augment:
        if key not in AUGMENT_DEFAULTS:
            raise _unknown_key(f"data.augment.{key}", list(AUGMENT_DEFAULTS))
    validate_augment(augment)  # the data layer's type checks; the recipe keeps only what the user set
    return augment


def default_data_root() -> str:
    """``<default cache>/inaturalist_12K``, the folder ``inat-zoo data download`` fills."""
    from .data.download import default_data_dir

    return os.fspath(default_data_dir())


def validate_recipe(recipe: Mapping[str, Any]) -> dict:
    """Return a new recipe with every default filled in; raise :class:`UsageError` for any mistake.

    Only the recipe itself is checked here (keys, types, model name); whether the data folder exists and whether
    the run directory may be written are checked by the trainer, before it writes anything.
    """
    out = _validate_section(recipe, DEFAULTS, "")
    _validate_augment(out["data"]["augment"])
    if out["data"]["root"] is None:
        out["data"]["root"] = default_data_root()
    if out["output_dir"] is None:
        out["output_dir"] = os.path.join("runs", "recipe")
    if out["train"]["scheduler"] == "none" and out["train"]["layer_decay"] is not None:
        # timm applies layer decay only through its schedulers (lr_scale); without one it would silently vanish
        raise UsageError("recipe key 'train.layer_decay' needs a scheduler (train.scheduler cosine or step)")
    if out["model"]["unfreeze"] and out["model"]["freeze"] == "none":
        raise UsageError("recipe key 'model.unfreeze' needs a frozen model (model.freeze head or until:<stage>)")
    _check_unfreeze_epochs(out["model"]["unfreeze"], out["train"]["epochs"])
    return out


def _check_unfreeze_epochs(schedule: list[dict], epochs: int) -> None:
    """An unfreeze scheduled after the last epoch would silently never happen: refuse it.

    The stage names need the model and are resolved by the trainer's pre-flight (``inat_zoo.train.preflight``).
    """
    for item in schedule:
        if item["epoch"] > epochs:
            raise UsageError(
                f"recipe key 'model.unfreeze' unfreezes {item['stage']!r} at epoch {item['epoch']}, after the last "
                f"epoch (train.epochs={epochs}): it would never happen; use an epoch from 1 to {epochs}"
            )


# -------------------------------------------------------------------------------------------- files, overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); the value is read as YAML (lists, null, true...)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UsageError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    return key.split("."), value


def set_dotted_key(recipe: dict, key: str, value: Any, context: str) -> None:
    """``recipe["a"]["b"] = value`` for ``key="a.b"``, creating sections; ``context`` starts the error message."""
    parts = key.split(".")
    node = recipe
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UsageError(f"{context}: {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def keys_overlap(a: str, b: str) -> bool:
    """Whether two dotted keys name the same value or one is a section holding the other (``model.args`` and
    ``model.args.dense_size``): setting one then changes what the other holds."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def apply_overrides(recipe: dict, overrides: Sequence[str]) -> dict:
    """Set dotted keys in a copy of ``recipe``; unknown keys are caught by :func:`validate_recipe` afterwards.

    Raises :class:`UsageError` for an override that replaces a whole section after an earlier override set a key
    inside it (``model.args.dense_size=24 model.args={filters: 8}``): the earlier value would silently vanish.
    """
    recipe = copy.deepcopy(recipe)
    done: list[tuple[str, str]] = []
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        for earlier_key, earlier_text in done:
            if earlier_key.startswith(key + "."):
                raise UsageError(
                    f"override {text!r} replaces the section {key!r} after {earlier_text!r} set a key inside it, "
                    "which would be lost; give the section first or put the key into its value"
                )
        set_dotted_key(recipe, key, value, f"override {text!r}")
        done.append((key, text))
    return recipe


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
        raise UsageError(f"{what} {str(path)!r} must hold {expected}, got {_type_name(data)}")
    return data


def read_recipe_file(path: str | os.PathLike) -> dict:
    return read_yaml_mapping(path, "recipe file", "a mapping of sections")


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Read a recipe YAML, apply ``key=value`` overrides, validate and fill defaults.

    ``output_dir`` defaults to ``runs/<recipe file stem>``.
    """
    recipe = apply_overrides(read_recipe_file(path), overrides)
    if recipe.get("output_dir") is None:
        recipe["output_dir"] = os.path.join("runs", Path(path).stem)
    try:
        return validate_recipe(recipe)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def dump_recipe(recipe: Mapping[str, Any]) -> str:
    """The resolved recipe as YAML, sections in schema order, so it can be re-run as is."""
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None)
