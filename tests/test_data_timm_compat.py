"""timm's posterize at 0 bits (RandAugment, AutoAugment v0) must not stop training on current Pillow."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment

from inat_zoo.data import create_image_transform
from inat_zoo.data.timm_compat import posterize

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def _photo(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _posterize_ops(transform) -> list:
    ops = []
    for step in transform.transforms:
        ops += list(getattr(step, "ops", None) or [])
        for sub in getattr(step, "policy", None) or []:
            ops += list(sub)
    return [op for op in ops if "Posterize" in op.name]


def test_posterize_keeps_timms_meaning_over_the_whole_range():
    img = _photo()
    assert np.asarray(posterize(img, 0)).max() == 0 and posterize(img, 0).size == img.size  # the TF reference
    for bits in range(1, 8):
        assert np.array_equal(np.asarray(posterize(img, bits)), np.asarray(auto_augment.posterize(img, bits)))
    assert posterize(img, 8) is img


@pytest.mark.parametrize("policy", ["rand-m10-mstd0-inc1-n3", "rand-m0-mstd0-n3", "v0", "augmix-m5"])
def test_policies_reaching_zero_bits_run(policy):
    """m10 + inc1 and m0 without inc1 ask for 0 bits each time posterize is drawn; v0 has a fixed 0-bit entry."""
    transform = create_image_transform(CONFIG, is_training=True, augment={"auto_augment": policy})
    ops = _posterize_ops(transform)
    assert ops and all(op.aug_fn is posterize for op in ops)
    random.seed(0)
    torch.manual_seed(0)
    img = _photo()
    for _ in range(150):  # posterize is drawn many times; timm's own op raises ValueError on the first 0 bits
        out = transform(img)
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
