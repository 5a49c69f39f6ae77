"""prepare_dataset: a resized copy in the Arrow cache, same labels, loaded from the cache on the second call."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from inat_zoo.data import create_image_transform, load_inat12k, prepare_dataset, with_image_transform
from inat_zoo.data import prepare as prepare_module
from inat_zoo.errors import UsageError

from .data_helpers import copy_subset

CONFIG = {"input_size": (3, 24, 24), "interpolation": "bilinear", "crop_pct": 0.875}


def _cache_files(dsdict) -> dict[str, list[str]]:
    return {name: [f["filename"] for f in split.cache_files] for name, split in dsdict.items()}


@pytest.fixture(scope="module")
def odd_root(sample_root, tmp_path_factory):
    """Three sample classes plus files in odd modes and an EXIF-rotated JPEG in the first class."""
    root = copy_subset(sample_root, tmp_path_factory.mktemp("odd") / "data", classes=3, train=4, val=2)
    folder = root / "train" / "synth_checker"
    Image.fromarray(np.full((50, 60), 40000, np.uint16)).save(folder / ("1" * 32 + ".png"))
    Image.new("RGBA", (60, 50), (10, 200, 30, 128)).save(folder / ("2" * 32 + ".png"))
    Image.new("P", (60, 50), 3).save(folder / ("3" * 32 + ".png"))
    Image.new("CMYK", (60, 50), (0, 255, 255, 0)).save(folder / ("4" * 32 + ".jpg"))
    Image.new("L", (60, 50), 99).save(folder / ("5" * 32 + ".jpg"))
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (80, 40), (0, 0, 250)).save(folder / ("6" * 32 + ".jpg"), exif=exif)
    return root


def test_odd_modes_and_exif_through_the_dataset(odd_root):
    dsdict = load_inat12k(odd_root, val_fraction=0.5, seed=0)
    assert len(dsdict["train"]) + len(dsdict["validation"]) == 18
    for split in dsdict.values():
        ds = with_image_transform(split, create_image_transform(CONFIG, is_training=False), CONFIG)
        batch = ds[: len(ds)]
        assert all(x.shape == (3, 24, 24) and torch.isfinite(x).all() for x in batch["pixel_values"])


def test_prepare_resizes_keeps_labels_and_hits_the_cache(odd_root, monkeypatch):
    dsdict = load_inat12k(odd_root, val_fraction=0.5, seed=0)
    prepared = prepare_dataset(dsdict, short_side=32)
    for name, split in prepared.items():
        assert list(split["label"]) == list(dsdict[name]["label"])
        assert split.features == dsdict[name].features
        for image in split["image"]:
            assert image.mode == "RGB" and min(image.size) == 32 and image.format == "PPM"
    images = list(prepared["train"]["image"]) + list(prepared["validation"]["image"])
    rotated = [img for img in images if img.size == (32, 64)]
    assert len(rotated) == 1  # the 80x40 EXIF-rotated file, upright (portrait) and halved
    assert np.asarray(rotated[0])[..., 2].mean() > 200

    files = _cache_files(prepared)
    mtimes = {f: os.stat(f).st_mtime_ns for names in files.values() for f in names}
    calls = []
    real = prepare_module._shrink_batch
    monkeypatch.setattr(prepare_module, "_shrink_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = prepare_dataset(dsdict, short_side=32)
    assert calls == []  # loaded from the Arrow cache, nothing decoded
    assert _cache_files(again) == files
    assert all(os.stat(f).st_mtime_ns == m for f, m in mtimes.items())

    as_jpeg = prepare_dataset(dsdict, short_side=32, image_format="jpeg")
    assert calls  # another format is another cache entry
    assert as_jpeg["test"][0]["image"].format == "JPEG"
    assert _cache_files(as_jpeg)["test"] != files["test"]


def test_prepared_copy_feeds_the_transform_like_the_original(sample_root):
    dsdict = load_inat12k(sample_root, val_fraction=0.25, seed=0)
    prepared = prepare_dataset(datasets.DatasetDict(test=dsdict["test"]), 28)
    evaluate = create_image_transform(CONFIG, is_training=False)
    original = with_image_transform(dsdict["test"], evaluate, CONFIG)[:8]["pixel_values"]
    cached = with_image_transform(prepared["test"], evaluate, CONFIG)[:8]["pixel_values"]
    for i, (a, b) in enumerate(zip(original, cached, strict=True)):
        assert a.shape == b.shape == (3, 24, 24)
        other = original[(i + 4) % 8]  # another picture, for scale
        assert (a - b).abs().mean() < 0.25 * (a - other).abs().mean()  # the same picture, resized once more


def test_bad_arguments():
    with pytest.raises(UsageError, match="short side"):
        prepare_dataset({}, short_side=2)
    with pytest.raises(UsageError, match="image format"):
        prepare_dataset({}, short_side=32, image_format="webp")
