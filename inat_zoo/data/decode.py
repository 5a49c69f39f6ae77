"""The one decode rule of evaluation and inference, and what "cannot be read" means.

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

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["UnreadableImage", "describe", "image_files_in", "read_image_file", "read_rgb", "unreadable_reason"]


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
    from .transforms import decode_image, source_bytes

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
