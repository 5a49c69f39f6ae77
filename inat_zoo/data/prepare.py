"""A one-time, cached copy of a data set with images shrunk to a short side just above the training size.

The imagefolder Arrow cache stores paths, so every epoch decodes each ~800x600 JPEG again. Mapping a resized copy
into the ``datasets`` Arrow cache moves that work to a single pass. The copy is stored uncompressed by default
(``image_format="raw"``: binary PPM, which Pillow opens in ~0.3 ms against ~1.6 ms for a 256 px JPEG; about 260 KB
per image, ~3 GB for nature_12K at 256 px), or as JPEG quality 95 (``"jpeg"``: ~30 KB per image) when disk space
matters more. ``map`` results are cached under a fingerprint of (source split, short side, format, version), so a
second call, in this process or the next run, loads the cache at once.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .decode import decode_image
from .imagefolder import with_rgb_images
from .library_compat import dataset_fingerprint
from .transforms import DEFAULT_CROP_PCT, decode_short_side

if TYPE_CHECKING:
    import datasets

_FORMAT_VERSION = "1"  # bump when the stored bytes change
IMAGE_FORMATS = {"raw": ("PPM", {}), "jpeg": ("JPEG", {"quality": 95})}


def short_side_for(image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """The short side the prepared copy keeps for a square training size and the model's ``crop_pct``: room for
    evaluation's resize-then-crop, exactly what the trainer asks for (``decode_short_side``), so it reuses the copy."""
    return decode_short_side({"input_size": (3, image_size, image_size), "crop_pct": crop_pct})


def _shrink_batch(batch: dict[str, list], short_side: int, image_format: str) -> dict[str, list]:
    from PIL import Image

    out: list[dict[str, Any]] = []
    for value in batch["image"]:
        img = decode_image(value, short_side)
        w, h = img.size
        scale = short_side / min(w, h)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        buf = io.BytesIO()
        pil_format, options = IMAGE_FORMATS[image_format]
        img.save(buf, format=pil_format, **options)
        out.append({"bytes": buf.getvalue(), "path": None})
    return {"image": out}


def _default_num_proc(rows: int) -> int | None:
    return min(8, os.cpu_count() or 1) if rows >= 2000 else None


def prepare_split(
    split: datasets.Dataset, short_side: int, num_proc: int | None = None, image_format: str = "raw", desc: str = ""
) -> datasets.Dataset:
    """One split of :func:`prepare_dataset` (``short_side`` in pixels); raises UsageError without an ``image`` column.

    The result is cached by ``datasets`` under a fingerprint of (the split's fingerprint, short side, format,
    ``_FORMAT_VERSION``), so the same call in a later process loads it instead of resizing again.
    """
    import datasets
    from datasets.fingerprint import Hasher

    if "image" not in split.column_names:
        raise UsageError(f"dataset needs an 'image' column, has {split.column_names}")
    # the raw {"bytes", "path"} values, without any format transform (load_inat12k's RGB decoder): _shrink_batch
    # decodes them itself, at reduced scale
    source = split.with_format(None).cast_column("image", datasets.Image(decode=False))
    fingerprint = Hasher.hash(
        ("inat_zoo.prepare", _FORMAT_VERSION, dataset_fingerprint(split), short_side, image_format)
    )
    features = source.features.copy()
    shrunk = source.map(
        _shrink_batch,
        batched=True,
        batch_size=64,
        fn_kwargs={"short_side": short_side, "image_format": image_format},
        num_proc=num_proc if num_proc is not None else _default_num_proc(len(source)),
        features=features,
        new_fingerprint=fingerprint,
        desc=desc or f"preparing images (short side {short_side} px)",
    )
    return with_rgb_images(shrunk)


def prepare_dataset(
    dsdict: datasets.DatasetDict, short_side: int, num_proc: int | None = None, *, image_format: str = "raw"
) -> datasets.DatasetDict:
    """Every split of ``dsdict`` with its images resized so the short side is ``short_side`` (never enlarged),
    EXIF-rotated, RGB, stored in the Arrow cache (``image_format`` "raw" or "jpeg", see the module docstring).
    Same columns and labels; ``image`` decodes to an upright RGB PIL image by the rule of
    :func:`~inat_zoo.data.load_inat12k`. ``num_proc`` defaults to up to 8 processes for splits of 2000+ images.
    Shows a progress bar per split (datasets' ``map``).

    Under ``accelerate``, call it inside ``accelerator.main_process_first()`` so one process writes the cache.
    """
    import datasets

    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 8:
        raise UsageError(f"prepare: short side must be an integer >= 8, got {short_side!r}")
    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"prepare: image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    return datasets.DatasetDict(
        {
            name: prepare_split(split, short_side, num_proc, image_format, desc=f"preparing {name} ({short_side} px)")
            for name, split in dsdict.items()
        }
    )
