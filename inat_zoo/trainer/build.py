"""Pure factories of one training run's pieces, and :func:`build_run`, which assembles them in a fixed order.

The order of :func:`build_run` is part of the behaviour: the seed is set first and every later step that draws on
the global RNG (model init, EMA copy, loaders) does so in the same sequence as before, so runs stay reproducible and
resumable bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..recipe_schema import Recipe
from .accelerate_compat import reset_accelerator_state


# --------------------------------------------------------------------------------------------------- model
def _timm_model(recipe: Recipe, num_classes: int | None, args: dict, *, meta: bool):
    import timm
    import torch

    from .. import models  # noqa: F401  (registers inat_*)

    m = recipe.model
    classes = {} if num_classes is None else {"num_classes": num_classes}
    timm_weights = m.pretrained is True and not meta  # a PATH is loaded below, with the head decided by its shape
    try:
        # on the meta device: parameters without storage and no weights loaded, for checks that cost nothing
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = timm.create_model(m.name, pretrained=timm_weights, **classes, **args)
    except (TypeError, ValueError) as e:  # an unknown or bad keyword argument of the model's constructor
        raise UsageError(f"model.args for {m.name!r} are not accepted: {e}") from None
    if isinstance(m.pretrained, str) and not meta:
        from accelerate import PartialState

        from .weights import load_weights

        kept = load_weights(model, m.pretrained)
        head = "kept" if kept else "replaced (another class count)"
        PartialState().print(f"weights from {m.pretrained}: classifier head {head}")
    return model


def _model_args(recipe: Recipe, num_classes: int | None) -> dict:
    """``model.args``, plus ``img_size=data.image_size`` for a model that takes only its own input size (timm's
    ``fixed_input_size``: FlexibleCNN's flatten head, ViTs) when the recipe names no ``img_size``: the recipe asks
    for crops of that size, so the model is built for them instead of failing on the first batch."""
    args = dict(recipe.model.args)
    size = recipe.data.image_size
    if size is None or "img_size" in args:
        return args
    cfg = getattr(_timm_model(recipe, num_classes, args, meta=True), "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and tuple(cfg["input_size"][-2:]) != (size, size):
        args["img_size"] = size
    return args


def create_model(recipe: Recipe, num_classes: int | None, *, meta: bool = False):
    """The recipe's timm model with ``num_classes`` outputs (None: the model's default), on the meta device with
    ``meta`` (for :func:`inat_zoo.trainer.preflight.preflight`). Raises :class:`UsageError` when the model does not
    accept ``model.args``."""
    args = _model_args(recipe, num_classes)
    try:
        return _timm_model(recipe, num_classes, args, meta=meta)
    except UsageError as e:
        if "img_size" in args and "img_size" not in recipe.model.args:
            raise UsageError(
                f"{e} (img_size={args['img_size']} is data.image_size: {recipe.model.name!r} takes a fixed "
                "input size, built for the training crops)"
            ) from None
        raise


def data_config(model, recipe: Recipe) -> dict:
    """The model's timm data config (``timm.data.resolve_model_data_config``) with the training crop size as timm's
    ``img_size`` argument: ``data.image_size``, else ``model.args.img_size`` (square: preflight refuses another),
    else the model's own. The channel count stays the model's."""
    from timm.data import resolve_model_data_config

    size = recipe.data.image_size or recipe.model.args.get("img_size")
    if isinstance(size, (list, tuple)):
        size = size[-1]
    if not size:
        return dict(resolve_model_data_config(model))
    channels = ((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3,))[0]
    return dict(resolve_model_data_config(model, args={"in_chans": channels, "img_size": int(size)}))


def freeze_model(model, recipe: Recipe):
    """The model frozen as ``model.freeze`` says (:func:`inat_zoo.freeze.apply_freeze`), in channels_last memory
    format when ``train.channels_last`` asks."""
    import torch

    freeze = recipe.model.freeze
    if freeze.kind != "none":
        from ..freeze import apply_freeze

        model = apply_freeze(model, freeze)
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# -------------------------------------------------------------------------------------- optimizer, schedule
def param_groups(model, recipe: Recipe) -> list[dict]:
    """timm's parameter groups (no weight decay on 1-d params nor on the model's ``no_weight_decay()``, optional
    layer-wise lr scale) over trainable params: the groups ``create_optimizer_v2`` builds."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    train_config = recipe.train
    skip = getattr(model, "no_weight_decay", set)()  # as create_optimizer_v2 does (e.g. a ViT's pos_embed)
    if train_config.layer_decay is not None:
        return param_groups_layer_decay(model, train_config.weight_decay, skip, layer_decay=train_config.layer_decay)
    return param_groups_weight_decay(model, train_config.weight_decay, no_weight_decay_list=skip)


def add_param_groups(optimizer, model, recipe: Recipe, new_ids: set[int]) -> None:
    """Add the parameters whose ids are in ``new_ids`` (just unfrozen) to ``optimizer``, in the groups that
    :func:`param_groups` gives them (their weight decay and layer-wise lr scale)."""
    for group in param_groups(model, recipe):
        params = [p for p in group["params"] if id(p) in new_ids]
        if params:
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "param_names"}, "params": params})


def create_optimizer(model, recipe: Recipe):
    """timm's ``create_optimizer_v2`` over the model's trainable parameters (groups as :func:`param_groups`)."""
    from timm.optim import create_optimizer_v2

    train_config = recipe.train
    return create_optimizer_v2(
        model,
        opt=train_config.optimizer,
        lr=train_config.lr,
        weight_decay=train_config.weight_decay,
        layer_decay=train_config.layer_decay,
    )


def create_scheduler(optimizer, recipe: Recipe, updates_per_epoch: int):
    """timm's ``create_scheduler_v2``, stepped per optimizer update (``step_update``); None for ``scheduler: none``."""
    from timm.scheduler import create_scheduler_v2

    train_config = recipe.train
    if train_config.scheduler == "none":
        return None
    kwargs = {}
    if train_config.decay_epochs is not None:
        kwargs["decay_epochs"] = train_config.decay_epochs
    elif train_config.scheduler == "step":
        kwargs["decay_epochs"] = max(1, train_config.epochs // 3)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=train_config.scheduler,
        num_epochs=train_config.epochs,
        warmup_epochs=train_config.warmup_epochs,
        warmup_lr=train_config.warmup_lr,
        min_lr=train_config.min_lr,
        decay_rate=train_config.decay_rate,
        warmup_prefix=False,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
        **kwargs,
    )
    return scheduler


def create_ema(model, recipe: Recipe, accelerator):
    """timm's ``ModelEmaV3`` of the model (decay 0.9998 for ``train.ema: true``, else the given float), registered
    for checkpointing; None when ``train.ema`` is false.

    The exponential moving average of the weights is timm's implementation (updated once per optimizer step, with
    its decay warm-up ``use_warmup=True``); the model is moved to the accelerator's device first so the copy lives
    there too.
    """
    ema = recipe.train.ema
    if ema is False:
        return None
    from timm.utils import ModelEmaV3

    decay = 0.9998 if ema is True else float(ema)
    # the copy stays where the model is when it is made: move the model first, or the EMA (and evaluation with it)
    # would live on the CPU while prepare() puts the model on the accelerator
    model.to(accelerator.device)
    model_ema = ModelEmaV3(model, decay=decay, use_warmup=True)
    accelerator.register_for_checkpointing(model_ema)
    return model_ema


def current_lr(optimizer) -> float:
    """The largest lr across groups (the head's under layer decay), what a person means by 'the lr'."""
    return max(g["lr"] for g in optimizer.param_groups)


def flat_config(recipe: dict, prefix: str = "") -> dict:
    """The recipe (as dumped: :meth:`Recipe.model_dump`) as one level of dotted keys (the tracker's config);
    non-scalar leaves as JSON strings."""
    out = {}
    for key, value in recipe.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class RunParts:
    """The pieces of one run that :class:`inat_zoo.trainer.loop.Trainer` drives.

    ``core`` is the unwrapped timm model (what is exported), ``model`` what the loop calls (prepared: DDP and/or
    compiled, and :class:`inat_zoo.feature_cache.HeadOnly` on cached features); ``scheduler`` and ``ema`` may be None;
    ``mixup`` and ``criterion`` are :mod:`inat_zoo.trainer.losses`' (``mixup`` the identity when off).
    """

    accelerator: object
    core: object
    model: object
    optimizer: object
    train_loader: object
    val_loader: object
    scheduler: object
    ema: object
    criterion: object
    distill: object
    label_names: list[str]
    data_config: dict
    params_total: int
    updates_per_epoch: int
    cached: bool
    mixup: object


def create_accelerator(recipe: Recipe):
    """The run's ``Accelerator`` (mixed precision, accumulation, the trackers of :mod:`.tracking`, seedable sampler),
    the global seed set.

    A process may train several recipes (sweeps, tests): the previous run's accelerate settings are forgotten first
    (:func:`inat_zoo.trainer.accelerate_compat.reset_accelerator_state`)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    from .tracking import accelerator_options

    reset_accelerator_state()
    trackers = accelerator_options(recipe)
    accelerator = Accelerator(
        mixed_precision=recipe.train.mixed_precision,
        gradient_accumulation_steps=recipe.train.grad_accum_steps,
        log_with=trackers["log_with"],
        project_config=ProjectConfiguration(
            project_dir=str(Path(recipe.output_dir)),
            logging_dir=trackers["logging_dir"],
            automatic_checkpoint_naming=False,
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(recipe.seed)
    return accelerator


def build_run(recipe: Recipe) -> RunParts:
    """Assemble a validated recipe's run: accelerator, data, model, loaders, optimizer, EMA, prepared by accelerate.

    The steps run in this order on purpose (see the module docstring). The criterion and the mixup are
    :func:`inat_zoo.trainer.losses.create_criterion` / :func:`~inat_zoo.trainer.losses.create_mixup` (cross-entropy
    with ``train.label_smoothing``, as in Szegedy et al. 2016, "Rethinking the Inception Architecture", and
    ``train.class_weights``; soft targets with ``train.mixup``); ``distill`` is the loss hook of ``train.distill``
    (:mod:`.distill`, identity when off). Raises :class:`UsageError` for a head feature cache that is asked and not
    possible, a ``train.class_weights`` list of the wrong length, or mixup over a train split smaller than one batch.
    """
    import torch

    from . import loaders, losses
    from .distill import create_distillation

    accelerator = create_accelerator(recipe)
    splits = loaders.load_splits(recipe, accelerator)
    label_names = list(splits["train"].features["label"].names)
    core = create_model(recipe, len(label_names))
    config = data_config(core, recipe)
    splits = loaders.prepare_splits(splits, recipe, config, accelerator)
    params_total = sum(p.numel() for p in core.parameters())  # before freezing turns some into buffers
    core = freeze_model(core, recipe)
    train_loader, val_loader, eval_transform = loaders.image_loaders(splits, recipe, config)
    cached = loaders.feature_cache_wanted(core, recipe, accelerator)
    if cached:
        train_loader, val_loader = loaders.cached_feature_loaders(
            core, splits, eval_transform, config, recipe, accelerator
        )
    optimizer = create_optimizer(core, recipe)
    labels = loaders.train_labels(splits) if recipe.train.class_weights == "balanced" else []
    weight = losses.class_weights(recipe, labels, len(label_names))
    if weight is not None:
        weight = weight.to(accelerator.device)
    criterion = losses.create_criterion(recipe, weight, soft_targets=recipe.train.mixup is not None)
    mixup = losses.create_mixup(recipe, len(label_names), accelerator.process_index)
    distill = create_distillation(recipe, config, accelerator)
    ema = create_ema(core, recipe, accelerator)
    model = core
    if cached:
        from ..feature_cache import HeadOnly

        model = HeadOnly(core)  # shares the head's parameters: training it trains (and exports) the model
    if recipe.train.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # the timm scheduler is stepped by the loop with the real update count of this process (not prepared)
    updates_per_epoch = math.ceil(len(train_loader) / recipe.train.grad_accum_steps)
    scheduler = create_scheduler(optimizer.optimizer, recipe, updates_per_epoch)
    return RunParts(
        accelerator, core, model, optimizer, train_loader, val_loader, scheduler, ema, criterion, distill, label_names,
        config, params_total, updates_per_epoch, cached, mixup,
    )  # fmt: skip
