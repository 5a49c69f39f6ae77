"""The synthetic sample: exact nature_12K layout, varied sizes, deterministic, and learnable (not noise)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from inat_zoo.data.sample import CLASS_NAMES, write_sample
from inat_zoo.errors import UsageError

HEX_JPG = re.compile(r"^[0-9a-f]{32}\.jpg$")


def _files(root, split):
    return sorted((root / split).glob("*/*"))


def test_layout_names_and_sizes(sample_root):
    assert sorted(p.name for p in sample_root.iterdir()) == ["train", "val"]
    for split, per_class in (("train", 12), ("val", 4)):
        classes = sorted(p.name for p in (sample_root / split).iterdir())
        assert classes == list(CLASS_NAMES) and len(classes) == 10
        assert all(name.startswith("synth_") for name in classes)
        for name in classes:
            files = sorted((sample_root / split / name).iterdir())
            assert len(files) == per_class
            assert all(HEX_JPG.match(f.name) for f in files)
    sizes = []
    for path in _files(sample_root, "train") + _files(sample_root, "val"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.append(img.size)
    assert all(40 <= min(s) and max(s) <= 72 for s in sizes)
    assert len(set(sizes)) > 20
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)  # landscape and portrait
    names = [p.name for p in _files(sample_root, "train") + _files(sample_root, "val")]
    assert len(set(names)) == len(names)


def test_deterministic_per_seed(sample_root, tmp_path):
    again = write_sample(tmp_path / "a", train_per_class=12, test_per_class=4, min_side=40, max_side=72, seed=0)
    first = _files(sample_root, "train")
    second = _files(again, "train")
    assert [p.relative_to(sample_root) for p in first] == [p.relative_to(again) for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    other = write_sample(tmp_path / "b", train_per_class=12, test_per_class=4, min_side=40, max_side=72, seed=1)
    assert {p.name for p in _files(other, "train")}.isdisjoint({p.name for p in first})


def test_refuses_existing_splits_and_bad_arguments(sample_root, tmp_path):
    with pytest.raises(UsageError, match="already exists"):
        write_sample(sample_root, train_per_class=1, test_per_class=1)
    with pytest.raises(UsageError, match="min_side"):
        write_sample(tmp_path / "x", min_side=50, max_side=40)
    with pytest.raises(UsageError, match="per class"):
        write_sample(tmp_path / "y", train_per_class=0)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UsageError, match="exists and is not a folder"):  # was a FileExistsError traceback
        write_sample(tmp_path / "a_file")
    assert not (tmp_path / "x" / "train").exists()


def _features(path) -> np.ndarray:
    """Translation-invariant texture (2-D FFT magnitude of a 32x32 grey copy) plus the mean colour."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255.0
    grey = rgb.mean(axis=2)
    spectrum = np.abs(np.fft.fft2(grey - grey.mean()))[:16, :16].ravel()
    spectrum /= np.linalg.norm(spectrum) + 1e-8
    return np.concatenate([spectrum, rgb.mean(axis=(0, 1))])


def test_classes_are_learnable_not_noise(sample_root):
    """A nearest-centroid classifier on crude features must beat chance (10%) by far on the held-out val/
    (0.57 for seed 0; about 0.1-0.3 with shuffled training labels)."""
    centroids = np.stack(
        [
            np.mean([_features(p) for p in sorted((sample_root / "train" / name).iterdir())], axis=0)
            for name in CLASS_NAMES
        ]
    )
    correct = total = 0
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((sample_root / "val" / name).iterdir()):
            guess = int(np.argmin(np.linalg.norm(centroids - _features(path), axis=1)))
            correct += guess == label
            total += 1
    assert correct / total >= 0.45, f"nearest-centroid accuracy {correct / total:.2f}"
