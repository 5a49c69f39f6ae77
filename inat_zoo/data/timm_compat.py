"""Repairs for timm 1.0.x augmentations on current Pillow, applied to the transforms we build (never globally).

timm's posterize ops follow the TensorFlow reference, where keeping 0 bits is a legal, black result:
RandAugment's ``Posterize`` reaches 0 at low magnitude, ``PosterizeIncreasing`` (the ``inc1`` policies) at magnitude
10, and the AutoAugment ``v0`` policy has a fixed 0-bit entry. Recent Pillow (13.0 here) refuses
``ImageOps.posterize(img, 0)`` with ``ValueError``, so such a policy stops training at a random step of the first
epoch. :func:`repair_posterize` swaps those ops' function for one that gives the reference's black image at 0 bits
and is timm's everywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage


def posterize(img: PILImage.Image, bits_to_keep: int, **_: Any) -> PILImage.Image:
    """timm's ``posterize`` over its whole range: 0 bits kept zeroes every channel (what older Pillow did)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * (256 * len(img.getbands())))
    return ImageOps.posterize(img, bits_to_keep)


def repair_posterize(transform: Any) -> Any:
    """Point every timm posterize op inside ``transform`` (a ``Compose`` or one step) at :func:`posterize`; returns
    ``transform`` (changed in place)."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", None) or [transform]:
        ops = list(getattr(step, "ops", None) or [])  # RandAugment, AugMixAugment
        for sub_policy in getattr(step, "policy", None) or []:  # AutoAugment
            ops.extend(sub_policy)
        for op in ops:
            if isinstance(op, auto_augment.AugmentOp) and op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize
    return transform
