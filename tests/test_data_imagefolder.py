"""load_inat12k: exact stratified split, test = val/, layout errors, bad files found up front, cached checks."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from inat_zoo.data import check_folder, load_inat12k
from inat_zoo.data import checks as checks_module
from inat_zoo.data.sample import CLASS_NAMES
from inat_zoo.errors import UsageError

from .data_helpers import add_bad_files, copy_subset


def _paths_and_labels(split: datasets.Dataset) -> list[tuple[str, str]]:
    raw = split.cast_column("image", datasets.Image(decode=False))
    names = split.features["label"].names
    return [(row["image"]["path"], names[row["label"]]) for row in raw]


@pytest.fixture(scope="module")
def loaded(sample_root):
    return load_inat12k(sample_root, val_fraction=0.25, seed=1)


def test_split_counts_disjoint_and_test_is_val_folder(sample_root, loaded):
    assert list(loaded) == ["train", "validation", "test"]
    assert loaded["train"].features["label"].names == list(CLASS_NAMES)
    assert set(loaded["train"].column_names) == {"image", "label"}
    train, validation, test = (_paths_and_labels(loaded[s]) for s in ("train", "validation", "test"))

    assert Counter(label for _, label in validation) == dict.fromkeys(CLASS_NAMES, 3)  # 25% of 12, every class
    assert Counter(label for _, label in train) == dict.fromkeys(CLASS_NAMES, 9)
    assert not {p for p, _ in train} & {p for p, _ in validation}
    train_folder = {str(p) for p in (sample_root / "train").glob("*/*.jpg")}
    assert {p for p, _ in train} | {p for p, _ in validation} == train_folder
    assert {p for p, _ in test} == {str(p) for p in (sample_root / "val").glob("*/*.jpg")}
    for path, label in train + validation + test:  # labels come from the class folder, none lost
        assert Path(path).parent.name == label
    image = loaded["test"][0]["image"]
    assert image.size[0] >= 40 and image.mode == "RGB"  # the `image` column decodes to PIL


def test_same_seed_same_split_other_seed_other_split(sample_root, loaded):
    again = load_inat12k(sample_root, val_fraction=0.25, seed=1)
    other = load_inat12k(sample_root, val_fraction=0.25, seed=2)
    assert _paths_and_labels(again["validation"]) == _paths_and_labels(loaded["validation"])
    assert {p for p, _ in _paths_and_labels(other["validation"])} != {
        p for p, _ in _paths_and_labels(loaded["validation"])
    }
    assert Counter(label for _, label in _paths_and_labels(other["validation"])) == dict.fromkeys(CLASS_NAMES, 3)


def test_bad_files_skipped_with_warning_and_refused_when_strict(sample_root, tmp_path, caplog):
    root = copy_subset(sample_root, tmp_path / "data", classes=3, train=4, val=2)
    bad = add_bad_files(root, "synth_checker")
    with caplog.at_level(logging.WARNING, logger="inat_zoo.data"):
        dsdict = load_inat12k(root, val_fraction=0.25, seed=0)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "3 unreadable" in warning
    assert all(str(p) in warning for p in bad.values())
    assert len(dsdict["train"]) + len(dsdict["validation"]) == 12 and len(dsdict["test"]) == 6
    every_path = {p for s in dsdict.values() for p, _ in _paths_and_labels(s)}
    assert not every_path & {str(p) for p in bad.values()}
    for split in dsdict.values():  # every remaining image decodes
        assert all(row["image"].size[0] > 0 for row in split)

    with pytest.raises(UsageError) as info:
        load_inat12k(root, strict=True)
    assert "3 unreadable" in str(info.value) and all(str(p) in str(info.value) for p in bad.values())

    report = check_folder(root, progress=False)
    assert set(report.bad_files) == set(bad.values())
    assert "empty file" in report.bad_files[bad["empty"]]
    assert "truncated" in report.bad_files[bad["truncated"]]
    assert report.counts["train"] == {"synth_checker": 4, "synth_crosses": 4, "synth_discs": 4}


def test_file_verdicts_are_cached_by_size_and_mtime(sample_root, tmp_path, monkeypatch):
    root = copy_subset(sample_root, tmp_path / "data", classes=2, train=3, val=1)
    files = sorted(root.glob("*/*/*.jpg"))
    assert checks_module.find_bad_files(root, files, progress=False) == {}
    calls = []
    real_verify = checks_module.verify_image
    monkeypatch.setattr(checks_module, "verify_image", lambda p: calls.append(p) or real_verify(p))
    assert checks_module.find_bad_files(root, files, progress=False) == {}
    assert calls == []  # nothing decoded again
    files[0].write_bytes(files[0].read_bytes()[:100])  # the file changes: verified again, now bad
    bad = checks_module.find_bad_files(root, files, progress=False)
    assert calls == [files[0]] and list(bad) == [files[0]]


def test_class_with_only_bad_files_is_an_error(sample_root, tmp_path):
    root = copy_subset(sample_root, tmp_path / "data", classes=2, train=2, val=1)
    for path in (root / "train" / "synth_checker").iterdir():
        path.write_bytes(b"")
    with pytest.raises(UsageError, match="every image in this class folder is unreadable"):
        load_inat12k(root)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_train", "missing train/"),
        ("missing_val", "missing val/"),
        ("empty_class", "empty class folder"),
        ("nested", "nested folder"),
        ("stray_image", "outside a class folder"),
        ("one_class", "need at least 2"),
        ("unknown_test_class", "classes not in train/"),
        ("no_root", "does not exist"),
    ],
)
def test_layout_errors(sample_root, tmp_path, breakage, message):
    root = copy_subset(sample_root, tmp_path / "data", classes=3, train=2, val=1)
    if breakage == "missing_train":
        shutil.rmtree(root / "train")
    elif breakage == "missing_val":
        shutil.rmtree(root / "val")
    elif breakage == "empty_class":
        (root / "train" / "synth_empty").mkdir()
    elif breakage == "nested":
        inner = root / "train" / "synth_checker" / "more"
        inner.mkdir()
        shutil.copy2(next((root / "train" / "synth_crosses").iterdir()), inner / "a.jpg")
    elif breakage == "stray_image":
        shutil.copy2(next((root / "train" / "synth_crosses").iterdir()), root / "train" / "loose.jpg")
    elif breakage == "one_class":
        for name in ("synth_crosses", "synth_discs"):
            shutil.rmtree(root / "train" / name)
    elif breakage == "unknown_test_class":
        shutil.copytree(root / "val" / "synth_checker", root / "val" / "synth_unknown")
    elif breakage == "no_root":
        root = tmp_path / "nowhere"
    with pytest.raises(UsageError, match=message):
        load_inat12k(root)


def test_bad_val_fraction(sample_root):
    with pytest.raises(UsageError, match="val_fraction"):
        load_inat12k(sample_root, val_fraction=1.5)


def test_hub_id_offline_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "someone/nothing-here" is no local folder
    with pytest.raises(UsageError, match="someone/nothing-here.*Hub dataset"):
        load_inat12k("someone/nothing-here")


def _write_odd_images(folder: Path) -> None:
    """One file per awkward storage: grey, CMYK, RGBA, palette with a transparent index, 16-bit grey, EXIF-rotated."""
    folder.mkdir(parents=True)
    stem = folder.parent.name + folder.name  # distinct file names across splits and classes
    Image.new("L", (48, 40), 99).save(folder / f"{stem}_grey.jpg")
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(folder / f"{stem}_cmyk.jpg")
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 24:, 3] = 255  # left half fully transparent, right half opaque red
    Image.fromarray(rgba, "RGBA").save(folder / f"{stem}_rgba.png")
    palette = Image.new("P", (48, 40), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    palette.save(folder / f"{stem}_palette.png", transparency=3)  # every pixel is the transparent index
    Image.fromarray(np.full((40, 48), 65535, np.uint16)).save(folder / f"{stem}_16bit.png")
    landscape = np.zeros((40, 64, 3), np.uint8)
    landscape[:, :8] = 255  # a white stripe on the left edge, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown portrait, the stripe along the top
    Image.fromarray(landscape).save(folder / f"{stem}_exif.jpg", exif=exif, quality=95)


def test_every_row_of_every_split_is_upright_rgb_by_the_training_rule(tmp_path):
    """The public dataset decodes like the training path (decode_image), before and after prepare_dataset."""
    from inat_zoo.data import prepare_dataset
    from inat_zoo.data.transforms import decode_image

    for split in ("train", "val"):
        for name in ("a", "b"):
            _write_odd_images(tmp_path / split / name)
    dsdict = load_inat12k(tmp_path, val_fraction=0.5, seed=0)
    prepared = prepare_dataset(dsdict, 16)  # the cached copy the trainer can use: same rule, then shrunk
    kinds = set()
    for name, split in dsdict.items():
        raw = split.cast_column("image", datasets.Image(decode=False))  # the datasets idiom still gives paths
        for i in range(len(split)):
            path = raw[i]["image"]["path"]
            image, reference = split[i]["image"], decode_image({"path": path, "bytes": None})
            assert image.mode == "RGB", (name, path, image.mode)
            assert np.array_equal(np.asarray(image), np.asarray(reference)), (name, path)
            kind = Path(path).stem.split("_")[-1]
            kinds.add(kind)
            pixels = np.asarray(image)
            if kind == "exif":  # rotated: portrait, the white stripe now along the top
                assert image.size == (40, 64) and pixels[:6].mean() > 240 and pixels[10:].mean() < 15
            elif kind in ("rgba", "palette"):  # transparency on white, not black
                assert (pixels[:, :20] == 255).all()
            elif kind == "16bit":  # scaled to 8 bits, not clipped
                assert (pixels == 255).all()
            small = prepared[name][i]["image"]  # map keeps the row order
            assert small.mode == "RGB" and min(small.size) == 16, (name, path, small.mode, small.size)
            shrunk = np.asarray(reference.resize(small.size, Image.Resampling.BICUBIC), np.float64)
            assert abs(np.asarray(small, np.float64).mean() - shrunk.mean()) < 3, (name, path)
    assert kinds == {"grey", "cmyk", "rgba", "palette", "16bit", "exif"}
    assert len(dsdict["test"]) == 12 and len(dsdict["train"]) + len(dsdict["validation"]) == 12
