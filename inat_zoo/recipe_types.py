"""The value types the recipe schema (:mod:`inat_zoo.recipe_schema`) is built from: YAML-lenient numbers, paths,
free mappings, the strict section base class, and the ``data.augment`` section with its validators.

Kept apart only so the schema module stays readable; every recipe key is still declared in one of these two modules,
and :mod:`inat_zoo.recipe_schema` is the one to import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .errors import UsageError
from .recipe_errors import recipe_value_error, type_name


# ------------------------------------------------------------------------------------------ reusable value types
def _yaml_number(value: Any) -> Any:
    """A finite number, as a float. YAML 1.1 reads ``1e-3`` (no dot) as a string: accept what is plainly a number."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise recipe_value_error(f" must be a number, got {value!r} ({type_name(value)})")
    return float(value)


def _path(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise recipe_value_error(f" must be a path, got {value!r} ({type_name(value)})")
    return os.fspath(value)


def _mapping(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise recipe_value_error(f" must be a mapping, got {value!r} ({type_name(value)})")
    return dict(value)


Number = Annotated[float, BeforeValidator(_yaml_number)]
PathText = Annotated[str | None, BeforeValidator(_path)]
FreeMapping = Annotated[dict[Any, Any], BeforeValidator(_mapping)]


class _Section(BaseModel):
    """A recipe section: unknown keys are refused, values are checked strictly, ``null`` means all defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)
    null_means_defaults: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, values: Any) -> Any:
        if values is None and cls.null_means_defaults:
            return {}
        if not isinstance(values, Mapping):
            raise PydanticCustomError("recipe_section", "not a mapping", {"got": repr(values)})
        for key in values:
            if not isinstance(key, str):  # YAML `1: x`: an unknown key, named as such (pydantic says "invalid_key")
                raise PydanticCustomError("recipe_unknown_key", "unknown key", {"key": str(key)})
        return values


# ------------------------------------------------------------------------------------------------- data.augment
def _probability(value: Any, info: ValidationInfo) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"data.augment.{info.field_name} must be a probability between 0 and 1, got {value!r}")
    return float(value)


def _crop_range(upper: float | None):
    def check(value: Any, info: ValidationInfo) -> tuple[float, float]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ok = ok and 0 < value[0] <= value[1] and (upper is None or value[1] <= upper)
        if not ok:
            bound = f" <= {upper}" if upper is not None else ""
            raise UsageError(
                f"data.augment.{info.field_name} must be [min, max] with 0 < min <= max{bound}, got {value!r}"
            )
        return float(value[0]), float(value[1])

    return check


def _auto_augment(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise UsageError(f"data.augment.auto_augment must be null or a policy string, got {value!r}")
    return value


def _color_jitter(value: Any) -> float | tuple[float, ...] | None:
    if value is None:
        return None
    scalar = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    sequence = isinstance(value, (list, tuple)) and len(value) in (3, 4)
    sequence = sequence and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)
    if not (scalar or sequence):
        raise UsageError(f"data.augment.color_jitter must be null, a number >= 0 or a list of 3-4, got {value!r}")
    return float(value) if scalar else tuple(float(v) for v in value)


Probability = Annotated[float, BeforeValidator(_probability)]


class Augment(_Section):
    """``data.augment``: the training transform's options, in timm ``create_transform``'s meaning.

    ``scale`` and ``ratio`` are RandomResizedCrop's area and aspect ranges; ``color_jitter`` is a float (brightness,
    contrast, saturation) or 3-4 floats, off by default because colour is a cue for many taxa; ``auto_augment`` is
    ``None``, a timm policy (``rand-m9-mstd0.5-inc1``, ``augmix-m5``, ``original``) or ``trivialaugment``
    (torchvision's TrivialAugmentWide).
    Wrong values raise :class:`UsageError` naming ``data.augment.<key>``.
    """

    hflip: Probability = 0.5
    vflip: Probability = 0.0
    scale: Annotated[tuple[float, float], BeforeValidator(_crop_range(1.0))] = (0.08, 1.0)
    ratio: Annotated[tuple[float, float], BeforeValidator(_crop_range(None))] = (3 / 4, 4 / 3)
    auto_augment: Annotated[str | None, BeforeValidator(_auto_augment)] = None
    color_jitter: Annotated[float | tuple[float, ...] | None, BeforeValidator(_color_jitter)] = None
    re_prob: Probability = 0.0

    @model_validator(mode="after")
    def _one_colour_source(self) -> Augment:
        if self.auto_augment is not None and self.color_jitter is not None:
            raise UsageError(
                "data.augment: color_jitter is ignored when auto_augment is set (timm drops it); set only one of them"
            )
        return self
