"""Image transforms from a timm data config, and a fast decoder that feeds them.

The transforms are timm's own (``create_transform``): the model's data config (``resolve_model_data_config``)
gives size, interpolation, mean/std and crop_pct, the recipe's ``data.augment`` the training options. Decoding is
ours: ``datasets``' Image feature always decodes the full JPEG, while a ~800x600 photo trained at 224 px only needs
a half-scale decode, which Pillow's ``draft`` gives for a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..recipe_schema import Augment, augment_options
from .decode import decode_image, open_image, source_bytes, to_rgb  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import datasets
    import torch
    from PIL import Image as PILImage

# The recipe's `data.augment` keys and their defaults (timm's create_transform meaning), from the recipe schema.
AUGMENT_DEFAULTS: dict[str, Any] = {
    name: list(field.default) if isinstance(field.default, tuple) else field.default
    for name, field in Augment.model_fields.items()
}
TRIVIAL_AUGMENT = "trivialaugment"  # torchvision's TrivialAugmentWide (timm has no TrivialAugment policy)
DEFAULT_CROP_PCT = 0.875


def validate_augment(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """``augment`` merged over :data:`AUGMENT_DEFAULTS`, type-checked by the recipe schema's :class:`Augment`.

    Raises :class:`UsageError` for an unknown key or a wrong value.
    """
    augment = dict(augment or {})
    unknown = sorted(set(augment) - set(AUGMENT_DEFAULTS), key=str)
    if unknown:
        raise UsageError(
            f"unknown data.augment key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(AUGMENT_DEFAULTS))}"
        )
    return augment_options(augment)


def _input_hw(data_config: Mapping[str, Any]) -> tuple[int, int]:
    try:
        size = data_config["input_size"]
    except KeyError:
        raise UsageError("data config has no input_size (use timm.data.resolve_model_data_config(model))") from None
    if isinstance(size, int):
        return size, size
    return int(size[-2]), int(size[-1])


def resolve_data_config(model: Any, image_size: int | None = None) -> dict[str, Any]:
    """The model's timm data config, with ``input_size`` made ``image_size`` x ``image_size`` when given."""
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise UsageError(f"data.image_size must be an integer >= 8, got {image_size!r}")
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    return config


def decode_short_side(data_config: Mapping[str, Any]) -> int:
    """The smallest short side the transforms need: eval resizes to size / crop_pct before the centre crop."""
    crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
    return math.ceil(max(_input_hw(data_config)) / min(crop_pct, DEFAULT_CROP_PCT))


def create_image_transform(
    data_config: Mapping[str, Any], is_training: bool, augment: Mapping[str, Any] | None = None
) -> Callable[[PILImage.Image], torch.Tensor]:
    """timm's transform for a data config: training = RandomResizedCrop + flips + ``augment``; evaluation = resize
    to ``size / crop_pct`` + centre crop. Both end in a normalised float tensor [C, H, W]."""
    from timm.data import create_transform

    options = validate_augment(augment)
    common = {
        "input_size": _input_hw(data_config),
        "interpolation": data_config.get("interpolation", "bilinear"),
        "mean": tuple(data_config.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(data_config.get("std", (0.229, 0.224, 0.225))),
    }
    if not is_training:
        return create_transform(
            **common,
            is_training=False,
            crop_pct=data_config.get("crop_pct"),
            crop_mode=data_config.get("crop_mode"),
        )
    aa = options["auto_augment"]
    train_kwargs = {
        "scale": options["scale"],
        "ratio": options["ratio"],
        "hflip": options["hflip"],
        "vflip": options["vflip"],
        "color_jitter": options["color_jitter"],
        "re_prob": options["re_prob"],
    }
    if aa == TRIVIAL_AUGMENT:
        from timm.data.transforms import str_to_interp_mode
        from torchvision import transforms as T

        primary, _jitter, final = create_transform(
            **common, is_training=True, separate=True, auto_augment=None, **train_kwargs
        )
        trivial = T.TrivialAugmentWide(interpolation=str_to_interp_mode(common["interpolation"]))
        return T.Compose([*primary.transforms, trivial, *final.transforms])  # no jitter with AA, as timm does
    try:
        transform = create_transform(**common, is_training=True, auto_augment=aa, **train_kwargs)
    except (AssertionError, KeyError, ValueError) as e:
        raise UsageError(
            f"data.augment.auto_augment {aa!r} is not a timm policy (e.g. 'rand-m9-mstd0.5-inc1', 'augmix-m5', "
            f"'original') nor {TRIVIAL_AUGMENT!r}: {e or type(e).__name__}"
        ) from e
    from .timm_compat import repair_posterize

    return repair_posterize(transform)  # timm's 0-bit posterize crashes on recent Pillow


class ImageBatchTransform:
    """``datasets`` format transform: decode (draft, EXIF, RGB), then the image transform, batch-wise.

    A timm transform is split by :class:`~inat_zoo.data.batched.BatchedTransform`: PIL steps per image, the
    ColorJitter/ToTensor/Normalize/RandomErasing tail once per batch (a DataLoader hands datasets whole batches via
    ``__getitems__``). A training transform's RandomResizedCrop is fused with decoding (the JPEG is decoded at the
    smallest scale its crop allows; see :mod:`inat_zoo.data.crop_decode`). Any other callable is applied per image.
    With ``defer_tail`` the items stop before the tail, as uint8 (H, W, 3), for
    :class:`~inat_zoo.data.batched.ImageCollate` to finish in the DataLoader. A plain module-level class, so the
    dataset stays picklable for DataLoader workers.

    Called with ``seeds`` (one 64-bit seed per image, see :mod:`inat_zoo.data.seeding`), each image's random steps
    draw from the global RNGs reseeded with its own seed, and its tail from a seed derived from it (carried in the
    items as ``"seed"`` when the tail is deferred); the caller's RNG streams are left as they were. Without
    ``seeds`` the steps draw from the global RNGs as they stand, as a plain timm transform would.
    """

    def __init__(
        self, transform: Callable[[PILImage.Image], torch.Tensor], min_side: int | None, defer_tail: bool = False
    ) -> None:
        from .batched import BatchedTransform

        self.transform = transform
        self.min_side = min_side
        self.batched = BatchedTransform.from_transform(transform)
        self.defer_tail = defer_tail

    def _head(self, value: Any) -> torch.Tensor:
        """One image's per-image steps: a finished float tensor (3, H, W) when the transform cannot be split, else
        the uint8 (H, W, 3) crop before the tail."""
        if self.batched is None:
            return self.transform(decode_image(value, self.min_side))
        if self.batched.crop is not None:
            return self.batched.crop_uint8(value)
        return self.batched.head_uint8([decode_image(value, self.min_side)])[0]

    def __call__(self, batch: dict[str, list], seeds: Sequence[int] | None = None) -> dict[str, list]:
        values, labels = batch["image"], batch["label"]
        if seeds is None:
            heads, tail_seeds = [self._head(value) for value in values], None
        else:
            from .seeding import TAIL_STREAM, derive_seed, preserved_global_rngs, reseed_global_rngs

            heads = []
            with preserved_global_rngs():
                for value, seed in zip(values, seeds, strict=True):
                    reseed_global_rngs(seed)
                    heads.append(self._head(value))
            tail_seeds = [derive_seed(seed, TAIL_STREAM) for seed in seeds]
        if self.batched is None:
            return {"pixel_values": heads, "label": labels}
        if not self.defer_tail:
            return {"pixel_values": self.batched.finish(heads, tail_seeds), "label": labels}
        out = {"pixel_values": heads, "label": labels}
        if tail_seeds is not None:
            out["seed"] = tail_seeds
        return out


def undecoded_images(split: datasets.Dataset) -> datasets.Dataset:
    """``split`` with its ``image`` column read as ``{"bytes", "path"}`` (``datasets.Image(decode=False)``), for the
    decoders of this package. Raises :class:`UsageError` when the ``image`` or ``label`` column is missing."""
    import datasets

    if "image" not in split.column_names or "label" not in split.column_names:
        raise UsageError(f"dataset needs 'image' and 'label' columns, has {split.column_names}")
    feature = split.features["image"]
    if isinstance(feature, datasets.Image) and feature.decode:
        split = split.cast_column("image", datasets.Image(decode=False))
    return split


def with_image_transform(
    split: datasets.Dataset,
    transform: Callable[[PILImage.Image], torch.Tensor],
    data_config: Mapping[str, Any],
    *,
    defer_tail: bool = False,
) -> datasets.Dataset:
    """A new dataset whose items are ``{"pixel_values": FloatTensor[C, H, W], "label": int}``.

    The image column is read undecoded and decoded by :func:`decode_image` at the scale the data config needs, so
    ``DataLoader(ds, batch_size, num_workers=k)`` with the default collate works and skips most JPEG work.
    ``defer_tail=True`` leaves a timm transform's ToTensor/Normalize (and jitter, erasing) to the DataLoader's
    collate: items are uint8 ``[H, W, C]``; :func:`inat_zoo.data.create_image_loader` pairs the two. Random steps
    draw from the global RNGs; :func:`inat_zoo.data.create_image_loader` with ``shuffle=True`` seeds them per sample.
    """
    split = undecoded_images(split)
    return split.with_transform(ImageBatchTransform(transform, decode_short_side(data_config), defer_tail))
