"""Decoding images: the primitives every reader shares, the one rule of evaluation, what "cannot be read" means.

The primitives (:func:`source_bytes`, :func:`open_image`, :func:`to_rgb`, :func:`decode_image`) turn a ``datasets``
image value into an upright 8-bit RGB image; the training path's fused crop decoder
(:mod:`inat_zoo.data.crop_decode`), the transforms and the public dataset's rows (:mod:`inat_zoo.data.imagefolder`)
all start from them, so a file gives the same pixels whichever path reads it. This module imports nothing else of
the data layer: it sits below the transforms and the crop decoder (no import cycle between them).

Every image that ``inat-zoo evaluate``, training's final test pass, ``predict`` and ``explain`` show a model is
decoded by :func:`read_rgb`: the whole file at full resolution (no reduced-scale JPEG ``draft``), EXIF orientation
applied, any Pillow mode turned into 8-bit RGB by the data layer's rule (transparency on white, 16-bit scaled).
The training loop may decode faster (``draft``, fused crops, the prepared cache); evaluation does not, so one image
gives one prediction whichever command shows it to the model.

An image that cannot be decoded for ANY reason (missing, a folder, empty, not an image, truncated, over Pillow's
pixel limit, a decoder error) raises :class:`UnreadableImage` with a one-line reason. The callers decide what that
means: an image named on the command line is an error (``inat-zoo: error: <file>: <reason>``, exit 2); an image met
inside a folder is skipped and named in a warning, as training does with the files ``data check`` flags.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "UnreadableImage",
    "decode_image",
    "describe",
    "image_files_in",
    "open_image",
    "read_image_file",
    "read_rgb",
    "source_bytes",
    "to_rgb",
    "unreadable_reason",
]


def to_rgb(img: PILImage.Image) -> PILImage.Image:
    """Any Pillow mode as 8-bit RGB: 16/32-bit greys are scaled (not clipped), transparency goes on white."""
    import numpy as np
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray((arr * (255.0 / peak)).round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray((arr * (255.0 / peak)).round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def source_bytes(value: Any) -> bytes | None:
    """The encoded bytes behind a ``datasets`` image value (``{"bytes", "path"}``, a path or bytes), read once;
    ``None`` for an already decoded PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") is None:
            raise ValueError("image value has neither bytes nor path")
        value = value["path"]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    raise TypeError(f"cannot decode an image from {type(value).__name__}")


def open_image(value: Any) -> PILImage.Image | None:
    """The not-yet-decoded image behind a ``datasets`` value (see :func:`source_bytes`): Pillow has read the header
    only, so size and format are known and ``draft`` still applies. ``None`` for a PIL image."""
    from PIL import Image

    data = source_bytes(value)
    return None if data is None else Image.open(io.BytesIO(data))


def decode_image(value: Any, min_side: int | None = None) -> PILImage.Image:
    """Open a ``datasets`` image value (``{"bytes", "path"}``, a path, bytes or a PIL image) as an upright RGB image.

    With ``min_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose sides both stay
    >= ``min_side``; the transforms then resize anyway, so the result matches a full decode closely, for less time.
    """
    from PIL import ImageOps

    img = open_image(value)
    if img is None:
        img = value
    else:
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.load()
    if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation
        if img is not value:  # our own freshly opened image: rotate in place; never mutate the caller's
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
    return to_rgb(img)


class UnreadableImage(Exception):
    """An image that cannot be decoded; ``str()`` is the one-line reason (without the file name)."""

    def __init__(self, reason: str, name: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.name = name


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_reason(error: BaseException) -> str:
    """The one-line reason an image could not be decoded, for any exception Pillow or a decoder raised."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, UnreadableImage):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read (unknown or damaged format)"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large to decode safely: {_one_line(error)}"
    if isinstance(error, MemoryError):
        return "too large to decode: out of memory"
    message = _one_line(error)
    if isinstance(error, OSError) and "truncat" in message.lower():
        return f"truncated file ({message})"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def read_rgb(value: Any) -> PILImage.Image:
    """Decode a ``datasets`` image value (``{"bytes", "path"}``, a path, bytes or a PIL image) by the one rule:
    full resolution, EXIF orientation applied, 8-bit RGB. Any failure is :class:`UnreadableImage`."""
    try:
        data = source_bytes(value)
        if data is not None and not data:
            raise UnreadableImage("empty file (0 bytes)")
        image = decode_image(value if data is None else {"bytes": data, "path": None})  # min_side None: full decode
        image.load()
    except UnreadableImage:
        raise
    except Exception as e:  # noqa: BLE001  (whatever Pillow or a plugin raises, the file is unusable)
        raise UnreadableImage(unreadable_reason(e)) from e
    return image


def describe(value: Any, fallback: str) -> str:
    """A name for an image value in messages: its path when it has one, else ``fallback`` (e.g. "test row 12")."""
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return fallback


def read_image_file(path: str | os.PathLike) -> PILImage.Image:
    """An image named on the command line, decoded by :func:`read_rgb`; any failure is a :class:`UsageError`
    reading ``<file>: <reason>`` (the CLI prints ``inat-zoo: error: <file>: <reason>``, exit 2)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UnreadableImage("is a folder, not an image file")
        if not path.exists():
            raise UnreadableImage("no such file")
        return read_rgb(str(path))
    except UnreadableImage as e:
        raise UsageError(f"{path}: {e.reason}") from e


def image_files_in(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted, hidden files and folders left out), by the
    extensions the data layer treats as images."""
    from .checks import image_extensions

    folder = Path(folder)
    extensions = image_extensions()
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if path.is_file() and path.suffix.lower() in extensions:
            found.append(path)
    return found


def format_skipped(names: Iterable[str], limit: int = 20) -> str:
    """``name (reason), ...`` of skipped images for one warning line."""
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")
