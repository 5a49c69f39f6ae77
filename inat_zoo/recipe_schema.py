"""The recipe schema: one pydantic v2 model per section (model, data and its augment, train, track) and the whole.

Every key, its type, its default, its range and its choices are declared here and nowhere else; ``inat_zoo.config``
reads YAML files and overrides and hands the mapping to :func:`resolve_recipe`, and the data layer's
``validate_augment`` is :func:`augment_options`. Values are checked strictly (``true`` is not the integer 1, ``"3"``
is not a number) except where YAML 1.1 forces leniency: ``1e-3`` without a dot reads as a string and a bare ``no``
reads as false. A failure is one :class:`UsageError` worded by ``inat_zoo.recipe_errors``; ``model.freeze`` and
``model.unfreeze`` are parsed into :class:`FreezeStrategy` and :class:`UnfreezeStep` and dumped back as text and
``{epoch, stage}`` mappings. The building blocks (number and path types, the strict section base, the
``data.augment`` section) are in :mod:`inat_zoo.recipe_types`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import UsageError
from .recipe_errors import recipe_value_error, translate, type_name, unknown_key
from .recipe_types import Augment, FreeMapping, Number, PathText, _Section, _yaml_number


def augment_options(augment: Mapping[str, Any]) -> dict[str, Any]:
    """``augment`` (keys already known to :class:`Augment`) merged over the defaults and type-checked.

    Returns a plain dict: probabilities as float, ``scale``/``ratio`` as (float, float), ``color_jitter`` as None,
    a float or a tuple of floats. Raises :class:`UsageError` for a wrong value.
    """
    try:
        return Augment.model_validate(dict(augment)).model_dump()
    except ValidationError as error:
        raise translate(error, Recipe, ("data", "augment")) from None


def _recipe_augment(augment: dict[str, Any]) -> dict[str, Any]:
    """The recipe keeps only what the user set (the trainer tells "no augment given" from the defaults)."""
    for key in augment:
        if key not in Augment.model_fields:
            raise unknown_key(f"data.augment.{key}", list(Augment.model_fields))
    augment_options(augment)
    return augment


# ------------------------------------------------------------------------------------------------------- model
_FREEZE_RE = re.compile(r"^(none|head|until:\S+)$")


def _model_name(value: Any) -> str:
    key = "recipe key 'model.name'"
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} must be a timm model name, got {value!r}")
    if value.startswith("hf-hub:"):
        from .hub_ids import parse_hub_id

        return f"hf-hub:{parse_hub_id(value, key, allow_revision=True)}"
    if value.startswith("local-dir:"):
        return value
    import timm

    from . import models  # noqa: F401  (registers inat_* with timm)

    if not timm.is_model(value):
        close = difflib.get_close_matches(value, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `timm.list_models()` or `inat-zoo models`)"
        raise UsageError(f"{key}: unknown timm model {value!r}{hint}")
    return value


@dataclass(frozen=True)
class FreezeStrategy:
    """``model.freeze`` parsed: ``kind`` none | head | until, and for ``until:<stage>`` the stage name.

    ``str()`` gives the recipe's text back (``until:layer3``), which is how the resolved recipe stores it.
    """

    kind: Literal["none", "head", "until"]
    stage: str | None = None

    @classmethod
    def parse(cls, text: Any) -> FreezeStrategy:
        """Raises ValueError (the schema words it) for anything but ``none``, ``head`` or ``until:<stage>``."""
        match = _FREEZE_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"not a freeze strategy: {text!r}")
        kind, _, stage = text.partition(":")
        return cls(kind, stage or None)

    def __str__(self) -> str:
        return f"{self.kind}:{self.stage}" if self.stage is not None else self.kind


def _freeze(value: Any) -> FreezeStrategy:
    if isinstance(value, FreezeStrategy):
        return value
    try:
        return FreezeStrategy.parse(value)
    except ValueError:
        raise recipe_value_error(f" must be none, head or until:<stage> (e.g. until:layer3), got {value!r}") from None


def _unfreeze_list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise recipe_value_error(f" must be a list of {{epoch: N, stage: NAME}}, got {value!r}")
    return value


class UnfreezeStep(_Section):
    """One ``model.unfreeze`` entry: at the start of ``epoch`` (1-based), unfreeze the model stage ``stage``."""

    epoch: int = Field(ge=1)
    stage: str

    @model_validator(mode="before")
    @classmethod
    def _exactly_epoch_and_stage(cls, item: Any) -> Any:
        if not isinstance(item, Mapping) or set(item) != {"epoch", "stage"}:
            raise recipe_value_error(f" must be a mapping with exactly the keys epoch and stage, got {item!r}")
        return item


def _pretrained(value: Any) -> bool | str:
    """``true``/``false``, or a local PATH to weights (whether it exists and fits is checked by the preflight)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, os.PathLike)) and os.fspath(value).strip():
        return os.fspath(value).strip()
    raise recipe_value_error(
        f" must be true, false or a PATH to weights (a .safetensors/.pth/.bin file, a timm model folder or a run "
        f"directory), got {value!r} ({type_name(value)})"
    )


class ModelSection(_Section):
    """``model``: the timm model (name, kwargs, pretrained weights: true, false or a local weights PATH, see
    :mod:`inat_zoo.trainer.weights`) and what of it is frozen when."""

    # validated even when left out, as before: checking the name registers inat_* with timm for the caller
    name: Annotated[str, BeforeValidator(_model_name)] = Field("inat_flexible_cnn", validate_default=True)
    args: FreeMapping = Field(default_factory=dict)
    pretrained: Annotated[bool | str, BeforeValidator(_pretrained)] = False
    freeze: Annotated[FreezeStrategy, BeforeValidator(_freeze), PlainSerializer(str)] = FreezeStrategy("none")
    unfreeze: Annotated[list[UnfreezeStep], BeforeValidator(_unfreeze_list)] = Field(default_factory=list)

    @field_validator("unfreeze", mode="after")
    @classmethod
    def _by_epoch(cls, schedule: list[UnfreezeStep]) -> list[UnfreezeStep]:
        return sorted(schedule, key=lambda step: step.epoch)


# -------------------------------------------------------------------------------------------------------- data
class DataSection(_Section):
    """``data``: where the images are and how they reach the model; ``root`` None means the default cache."""

    root: PathText = None
    image_size: int | None = Field(None, ge=8)
    val_fraction: Number = Field(0.2, gt=0.0, le=0.9)
    strict: bool = False
    num_workers: int = Field(2, ge=0)
    prepared_cache: bool = False
    augment: Annotated[FreeMapping, AfterValidator(_recipe_augment)] = Field(default_factory=dict)
    # random: a seeded permutation per epoch; balanced: draws with replacement, each class equally likely
    sampler: Literal["random", "balanced"] = "random"


# ------------------------------------------------------------------------------------------------------- train
def _optimizer(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise recipe_value_error(f" must be a timm optimizer name, got {value!r}")
    from timm.optim import list_optimizers

    known = list_optimizers()
    if value.lower() not in known:
        close = difflib.get_close_matches(value.lower(), known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `timm.optim.list_optimizers()`)"
        raise recipe_value_error(f": unknown timm optimizer {value!r}{hint}")
    return value


def _no_is_no(value: Any) -> Any:
    # YAML 1.1 reads a bare `no` as false: `mixed_precision: no` (file or key=value) means accelerate's "no"
    return "no" if value is False else value


def _ema(value: Any) -> bool | float:
    if isinstance(value, bool):
        return value
    decay = _yaml_number(value)
    if decay <= 0.0:
        raise recipe_value_error(f" must be > 0.0, got {decay}")
    if decay > 1.0:
        raise recipe_value_error(f" must be <= 1.0, got {decay}")
    if decay == 1.0:
        raise recipe_value_error(f" must be true, false or a decay in (0, 1), got {value!r}")
    return decay


def _head_feature_cache(value: Any) -> str | bool:
    if not isinstance(value, bool) and value != "auto":
        raise recipe_value_error(f" must be auto, true or false, got {value!r}")
    return value


def _class_weights(value: Any) -> str | list[float] | None:
    if value is None or value == "balanced":
        return value
    if isinstance(value, list) and value:
        weights = []
        for weight in value:
            try:
                weights.append(_yaml_number(weight))
            except PydanticCustomError:
                weights = None
                break
        if weights is not None and all(w > 0.0 for w in weights):
            return weights
    raise recipe_value_error(f" must be null, balanced or a list of one weight > 0 per class, got {value!r}")


class EarlyStopping(_Section):
    """``train.early_stopping``: stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (:mod:`inat_zoo.trainer.early_stopping`); the exported model is the best by ``metric``."""

    patience: int = Field(3, ge=1)
    min_delta: Number = Field(0.0, ge=0.0)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"


class Mixup(_Section):
    """``train.mixup``: timm's ``Mixup`` arguments (Zhang et al. 2018 mixup, Yun et al. 2019 CutMix), plus
    ``off_epoch`` (timm train.py's ``--mixup-off-epoch``): from that epoch (1-based) on, no image is mixed."""

    mixup_alpha: Number = Field(1.0, ge=0.0)
    cutmix_alpha: Number = Field(0.0, ge=0.0)
    prob: Number = Field(1.0, ge=0.0, le=1.0)
    switch_prob: Number = Field(0.5, ge=0.0, le=1.0)
    mode: Literal["batch", "pair", "elem"] = "batch"
    off_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something_to_mix(self) -> Mixup:
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise recipe_value_error(" needs mixup_alpha > 0 or cutmix_alpha > 0 (null turns mixing off)")
        return self


def _teacher(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise recipe_value_error(
            f" must be a MODEL: a run directory, local-dir:PATH or hf-hub:ORG/NAME, got {value!r} ({type_name(value)})"
        )
    return value.strip()


class Distill(_Section):
    """``train.distill`` (:mod:`inat_zoo.trainer.distill`): a ``teacher`` MODEL; ``alpha`` in [0, 1] weighs its term
    against the labels' cross-entropy; ``temperature`` > 0 softens both distributions."""

    null_means_defaults: ClassVar[bool] = False

    teacher: Annotated[str, BeforeValidator(_teacher)]
    alpha: Number = Field(0.5, ge=0.0, le=1.0)
    temperature: Number = Field(4.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _needs_a_teacher(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "teacher" not in values:
            raise recipe_value_error(" needs a teacher: a run directory, local-dir:PATH or hf-hub:ORG/NAME")
        return values


class TrainSection(_Section):
    """``train``: optimisation (timm optimizer and scheduler names), precision, EMA, caching and checkpoints.

    Epoch counts may be fractional (``warmup_epochs``, ``decay_epochs``); ``ema`` is true, false or a decay in (0, 1).
    """

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Annotated[str, BeforeValidator(_optimizer)] = "adamw"
    lr: Number = Field(1.0e-3, gt=0.0)
    weight_decay: Number = Field(0.05, ge=0.0)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: Number = Field(0.0, ge=0.0)
    warmup_lr: Number = Field(1.0e-6, ge=0.0)
    min_lr: Number = Field(0.0, ge=0.0)
    decay_epochs: Number | None = Field(None, gt=0.0)
    decay_rate: Number = Field(0.1, gt=0.0)
    layer_decay: Number | None = Field(None, gt=0.0, le=1.0)
    label_smoothing: Number = Field(0.0, ge=0.0, le=0.99)
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad: Number | None = Field(None, gt=0.0)
    mixed_precision: Annotated[Literal[None, "no", "bf16", "fp16"], BeforeValidator(_no_is_no)] = None
    channels_last: bool = False
    compile: bool = False
    ema: Annotated[bool | float, BeforeValidator(_ema)] = False
    head_feature_cache: Annotated[Literal["auto"] | bool, BeforeValidator(_head_feature_cache)] = "auto"
    checkpoint_every_steps: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    early_stopping: EarlyStopping | None = None
    mixup: Mixup | None = None
    class_weights: Annotated[Literal["balanced"] | list[float] | None, BeforeValidator(_class_weights)] = None
    distill: Distill | None = None


# ------------------------------------------------------------------------------------------------------- track
TRACKERS = ("wandb", "tensorboard", "trackio", "mlflow")


def _backends(value: Any) -> list[str]:
    """One tracker name or a list of them (accelerate's ``log_with`` names), without repeats, in the given order."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise recipe_value_error(f" must be a tracker name or a list of them ({', '.join(TRACKERS)}), got {value!r}")
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise recipe_value_error(f": unknown tracker {name!r}{hint}; choose from {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


class TrackSection(_Section):
    """``track``: trackers through accelerate (:mod:`inat_zoo.trainer.tracking`; none by default): ``backend`` one or
    several of :data:`TRACKERS`, ``wandb: true`` adds wandb (``mode`` offline writes locally only)."""

    backend: Annotated[list[str], BeforeValidator(_backends)] = Field(default_factory=list)
    wandb: bool = False
    project: str = "inat_zoo"
    mode: Literal["online", "offline", "disabled"] = "offline"
    run_name: str | None = None


# ------------------------------------------------------------------------------------------------------ recipe
class Recipe(_Section):
    """A whole training recipe; ``output_dir`` None means ``runs/<recipe file stem>`` (set by the loader)."""

    null_means_defaults: ClassVar[bool] = False

    seed: int = Field(42, ge=0)
    output_dir: PathText = None
    resume: bool = False
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    track: TrackSection = Field(default_factory=TrackSection)

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.train.scheduler == "none" and self.train.layer_decay is not None:
            # timm applies layer decay only through its schedulers (lr_scale); without one it would silently vanish
            raise UsageError("recipe key 'train.layer_decay' needs a scheduler (train.scheduler cosine or step)")
        if self.model.unfreeze and self.model.freeze.kind == "none":
            raise UsageError("recipe key 'model.unfreeze' needs a frozen model (model.freeze head or until:<stage>)")
        epochs = self.train.epochs
        mixup = self.train.mixup
        if mixup is not None and mixup.off_epoch is not None and mixup.off_epoch > epochs:
            raise UsageError(
                f"recipe key 'train.mixup.off_epoch' is {mixup.off_epoch}, after the last epoch (train.epochs="
                f"{epochs}): mixing would never stop; use an epoch from 1 to {epochs}, or leave it null"
            )
        for step in self.model.unfreeze:  # the stage names need the model: the trainer's pre-flight checks them
            if step.epoch > epochs:  # an unfreeze after the last epoch would silently never happen
                raise UsageError(
                    f"recipe key 'model.unfreeze' unfreezes {step.stage!r} at epoch {step.epoch}, after the last "
                    f"epoch (train.epochs={epochs}): it would never happen; use an epoch from 1 to {epochs}"
                )
        return self


def parse_recipe(recipe: Any) -> Recipe:
    """The recipe mapping (as read from YAML, or a resolved recipe dict) as typed :class:`Recipe` values.

    Raises :class:`UsageError` (one line, naming the dotted key) for an unknown key (with the closest match and the
    allowed keys), a wrong type, a value out of range or a bad choice.
    """
    try:
        return Recipe.model_validate(recipe)
    except ValidationError as error:
        raise translate(error, Recipe) from None


def resolve_recipe(recipe: Any) -> dict[str, Any]:
    """:func:`parse_recipe` dumped as a plain dict, every default filled in, sections and keys in schema order."""
    return parse_recipe(recipe).model_dump()


def _unvalidated_defaults(model: type[_Section]) -> _Section:
    sections = {
        name: _unvalidated_defaults(field.annotation)
        for name, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
    }
    return model.model_construct(**sections)


def recipe_defaults() -> dict[str, Any]:
    """Every section and key with its default, in schema order (``root`` and ``output_dir`` None).

    Built without validation: checking the default model name would import timm just to list the defaults.
    """
    return _unvalidated_defaults(Recipe).model_dump()
