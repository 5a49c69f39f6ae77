"""iNaturalist 12K (or any folder in its layout, or a Hub image-classification data set) as a ``DatasetDict``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..hub_ids import resolve_data_root
from .checks import check_folder, find_bad_files, format_paths, scan_root

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

__all__ = ["DecodeRGB", "check_folder", "load_inat12k", "split_train_validation", "with_rgb_images"]


class DecodeRGB:
    """``datasets`` format transform: each decoded ``image`` of a batch made an upright 8-bit RGB PIL image.

    The rule is the training path's own :func:`inat_zoo.data.transforms.decode_image` (EXIF orientation applied,
    transparency composited on white, 16-bit greys scaled to 8 bits, CMYK/palette/grey converted), so a row of the
    public dataset and a training crop of the same file start from the same pixels. Only PIL images are touched:
    after ``cast_column("image", datasets.Image(decode=False))`` the raw ``{"bytes", "path"}`` values pass through,
    as ``datasets`` users expect, and ``ds["label"]`` decodes nothing. A module-level class: it pickles.
    """

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from PIL import Image

        from .decode import decode_image

        if "image" in batch:
            batch["image"] = [decode_image(v) if isinstance(v, Image.Image) else v for v in batch["image"]]
        return batch


def with_rgb_images(data: datasets.Dataset | datasets.DatasetDict) -> datasets.Dataset | datasets.DatasetDict:
    """``data`` (a new object) whose ``image`` column decodes to upright 8-bit RGB PIL images (:class:`DecodeRGB`).

    ``datasets.Image(mode="RGB")`` is not used on purpose: its plain ``convert("RGB")`` turns transparent pixels
    black and clips 16-bit images. The training path (``with_image_transform``) replaces this format transform with
    its own fused decoder, which starts from the same pixels.
    """
    import datasets

    splits = data.values() if isinstance(data, datasets.DatasetDict) else [data]
    if any(not isinstance(split.features.get("image"), datasets.Image) for split in splits):
        raise UsageError("dataset needs an 'image' column of type datasets.Image")
    # a plain decoding Image(): no mode conversion of its own (a Hub dataset may declare one), DecodeRGB does it
    return data.cast_column("image", datasets.Image()).with_transform(DecodeRGB())


def split_train_validation(train: datasets.Dataset, val_fraction: float, seed: int) -> datasets.DatasetDict:
    """A stratified, seeded hold-out of ``train``: every class keeps the same share in both parts."""
    import datasets

    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    try:
        parts = train.train_test_split(test_size=val_fraction, stratify_by_column="label", seed=seed)
    except ValueError as e:
        raise UsageError(f"cannot hold out a stratified {val_fraction:g} of train/ for validation: {e}") from e
    return datasets.DatasetDict(train=parts["train"], validation=parts["test"])


_WARNED: set[tuple[Path, str]] = set()  # (root, listing) of the unreadable files already named in this process


def _load_local(root: Path, strict: bool) -> datasets.DatasetDict:
    import datasets

    train, test = scan_root(root)
    if test is None:
        raise UsageError(f"{root}: missing val/ folder (the held-out test split, {root}/val/<class>/<image>)")
    files = train.all_files() + test.all_files()
    bad = find_bad_files(root, files)
    if bad:
        listing = format_paths(bad)
        if strict:
            raise UsageError(f"{root}: {len(bad)} unreadable image file(s): {listing}")
        if (root, listing) not in _WARNED:  # once per process: training loads the folder again for its test pass
            _WARNED.add((root, listing))
            logger.warning("skipping %d unreadable image file(s) in %s: %s", len(bad), root, listing)
    for scan in (train, test):
        for name in scan.classes:
            if all(p in bad for p in scan.files[name]):
                raise UsageError(f"{scan.folder / name}: every image in this class folder is unreadable")
    data_files = {
        "train": [str(p) for p in train.all_files() if p not in bad],
        "test": [str(p) for p in test.all_files() if p not in bad],
    }
    dsdict = datasets.load_dataset("imagefolder", data_files=data_files, drop_labels=False, drop_metadata=True)
    names = dsdict["train"].features["label"].names
    if names != train.classes:  # cannot happen with the checks above; a guard against silent label loss
        raise UsageError(f"{root}: labels {names} do not match the class folders {train.classes}")
    return dsdict


def _load_hub(repo_id: str) -> datasets.DatasetDict:
    """A Hub image-classification data set, renamed to the ``image``/``label`` columns of the local layout."""
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id)
    except Exception as e:  # offline, unknown repo, no access: all user-fixable
        raise UsageError(f"{repo_id}: no such local folder, and loading it as a Hub dataset failed: {e}") from e
    if "train" not in loaded:
        raise UsageError(f"{repo_id}: the Hub dataset has no 'train' split (has {', '.join(loaded)})")
    test_name = next((s for s in ("test", "validation", "valid", "val") if s in loaded), None)
    if test_name is None:
        raise UsageError(f"{repo_id}: the Hub dataset has no test/validation split to use as the test set")
    features = loaded["train"].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise UsageError(f"{repo_id}: need an Image column and a ClassLabel column, found {dict(features)}")
    out = datasets.DatasetDict()
    for split, name in (("train", "train"), ("test", test_name)):
        ds = loaded[name].select_columns([image_col, label_col])
        if image_col != "image":
            ds = ds.rename_column(image_col, "image")
        if label_col != "label":
            ds = ds.rename_column(label_col, "label")
        out[split] = ds
    return out


def load_inat12k(
    root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 42, strict: bool = False
) -> datasets.DatasetDict:
    """Load ``root/train`` and ``root/val`` with ``datasets``' imagefolder as ``train``/``validation``/``test``.

    - ``validation`` is a stratified, seeded ``val_fraction`` of train/ (``train_test_split(stratify_by_column=
      "label")``), disjoint from ``train``; ``test`` is exactly the val/ folder (nature_12K's held-out set: never
      select models on it). ``label`` is a ClassLabel of the sorted class folder names.
    - The folder is checked first: a missing train/ or val/, an empty class folder, a nested folder (which would
      silently drop the labels) or fewer than 2 classes raise :class:`UsageError`. Unreadable images (empty,
      truncated, not an image) are skipped with a logged warning naming them, or refused with ``strict=True``.
      Verdicts are cached per file (path, size, mtime), so only the first run decodes every file.
    - ``ds[i]["image"]`` is an upright 8-bit RGB PIL image, whatever the file holds (grey, CMYK, palette, RGBA,
      16-bit, EXIF-rotated), by the training path's own rule (:func:`with_rgb_images`). Training does not decode
      rows one by one: :func:`inat_zoo.data.transforms.with_image_transform` replaces that transform with its fused
      decoder (JPEG decoded at reduced scale, only the crop), which starts from the same pixels.
    - ``root`` that is not a local path but a Hub dataset id ``org/name`` (or ``hf-hub:org/name``; the rule is
      :func:`inat_zoo.hub_ids.resolve_data_root`, shared with training, evaluate, prepare and push) is loaded from the
      Hub; its Image and ClassLabel columns become ``image`` and ``label``, its ``test`` (or ``validation``) split
      becomes ``test``, and ``validation`` is again held out of ``train``.
    """
    import datasets

    source = resolve_data_root(root, "data root")
    dsdict = _load_hub(source) if isinstance(source, str) else _load_local(source, strict)
    parts = split_train_validation(dsdict["train"], val_fraction, seed)
    splits = datasets.DatasetDict(train=parts["train"], validation=parts["validation"], test=dsdict["test"])
    return with_rgb_images(splits)
