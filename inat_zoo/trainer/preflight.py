"""The checks of a validated recipe against its model before anything is written (meta device: no memory, no
weights, no file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import typed_recipe
from ..errors import UsageError
from ..recipe_schema import Recipe
from .build import create_model, data_config


def check_data_root(recipe: Mapping[str, Any] | Recipe) -> None:
    """``data.root`` is an existing local path or a valid Hub dataset id (the one rule: :mod:`inat_zoo.hub_ids`);
    whether the Hub dataset exists is known when load_inat12k loads it, still before anything is written."""
    from ..hub_ids import resolve_data_root

    try:
        resolve_data_root(typed_recipe(recipe).data.root, "data.root")
    except UsageError as e:
        raise UsageError(f"{e} (run `inat-zoo data download` or `inat-zoo data sample --root DIR`)") from e


def _class_count(recipe: Recipe) -> int | None:
    """The classes in ``data.root``/train, listed as the data layer lists them (and its layout checked); None for
    a Hub data set, whose labels are known only once it is loaded (checks then use the model's default)."""
    root = Path(recipe.data.root)
    if not root.is_dir():
        return None
    from ..data.checks import scan_root

    train, _ = scan_root(root)
    return len(train.classes)


def preflight(recipe: Mapping[str, Any] | Recipe) -> None:
    """Resolve a recipe (typed, or a mapping parsed here) against its model, built on the meta device for the data's
    class count (no memory, no weights, no file written), so its mistakes stop the start instead of a later epoch:

    - the model name and ``model.args`` (:func:`inat_zoo.trainer.build.create_model`);
    - ``model.freeze`` and every ``model.unfreeze`` stage name against the model's stages
      (:func:`inat_zoo.freeze.check_schedule`); the unfreeze epochs are checked by the recipe schema;
    - the input size against the model: a square training crop (``data.image_size``, else ``model.args.img_size``,
      else the model's default) that the model, its head included, can take;
    - ``train.mixup`` against the batch (timm's Mixup mixes each image with its mirror in the batch: an even
      ``train.batch_size``, the per-process batch) and a ``train.class_weights`` list against the class count;
    - ``model.pretrained: PATH``: the weights exist, can be read and fit the model (:mod:`.weights`);
    - ``train.distill``: the teacher exists and has the data's class count (:func:`.distill.check_teacher`);
    - ``track.backend``: every tracker's package is installed (:func:`.tracking.check_trackers`).

    Raises :class:`UsageError` for each of them.
    """
    from ..freeze import check_schedule
    from .losses import check_class_weight_count

    recipe = typed_recipe(recipe)
    section = recipe.model
    batch_size = recipe.train.batch_size
    if recipe.train.mixup is not None and batch_size % 2:
        raise UsageError(
            f"recipe key 'train.batch_size' must be even with mixup (timm's Mixup mixes each image with its "
            f"mirror in the per-process batch), got {batch_size}"
        )
    _check_square(section.args.get("img_size"))
    num_classes = _class_count(recipe)
    if num_classes is not None:
        check_class_weight_count(recipe.train.class_weights, num_classes)
    model = create_model(recipe, num_classes, meta=True)
    check_schedule(model, section.freeze, [(step.epoch, step.stage) for step in section.unfreeze])
    _check_input_size(model, recipe)
    if isinstance(section.pretrained, str):
        from .weights import check_weights

        check_weights(model, section.pretrained)
    if recipe.train.distill is not None:
        from .distill import check_teacher

        check_teacher(recipe.train.distill.teacher, num_classes)
    from .tracking import check_trackers

    check_trackers(recipe)


def _check_square(img_size) -> None:
    if isinstance(img_size, (list, tuple)) and len(set(img_size)) != 1:
        raise UsageError(
            f"model.args.img_size {list(img_size)} is not square: training crops square images "
            "(data.image_size x data.image_size); give one int"
        )


def _check_input_size(model, recipe: Recipe) -> None:
    """Run a (2, 3, H, W) meta batch (the RGB crops the loaders make) through the model in eval mode."""
    import torch

    name = recipe.model.name
    img_size, image_size = recipe.model.args.get("img_size"), recipe.data.image_size
    height, width = data_config(model, recipe)["input_size"][-2:]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    declared = tuple(cfg.get("input_size", (0, height, width))[-2:])
    asked = img_size[-1] if isinstance(img_size, (list, tuple)) else img_size  # square: _check_square
    if asked is not None and image_size is not None and asked != image_size:  # the exported config would say both
        raise UsageError(
            f"model.args.img_size {img_size} contradicts data.image_size {image_size}: the model is trained on "
            f"{image_size}x{image_size} crops; drop img_size (it follows data.image_size) or make them equal"
        )
    if cfg.get("fixed_input_size") and declared != (height, width):
        raise UsageError(
            f"model.args.img_size {img_size} contradicts data.image_size {image_size}: {name!r} takes only "
            f"{declared[0]}x{declared[1]} inputs; set one of them (or drop img_size: it follows data.image_size)"
        )
    source = f"data.image_size={image_size}" if image_size else ("model.args.img_size" if img_size else "its config")
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, 3, height, width, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "meta" in reason:  # an operation without a meta kernel (.item(), ...): the shapes cannot be checked here
            return
        raise UsageError(f"model {name!r} cannot take the 3x{height}x{width} input of {source}: {reason}") from None
