"""Small image folders for the data tests (copied from the session's synthetic sample, so no extra rendering)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from inat_zoo.data.download import MARKER_NAME


def copy_subset(sample_root: Path, dest: Path, classes: int = 3, train: int = 4, val: int = 2) -> Path:
    """``dest/train`` and ``dest/val`` with the first ``classes`` classes and ``train``/``val`` images each."""
    for split, count in (("train", train), ("val", val)):
        for folder in sorted((sample_root / split).iterdir())[:classes]:
            out = dest / split / folder.name
            out.mkdir(parents=True)
            for path in sorted(folder.iterdir())[:count]:
                shutil.copy2(path, out / path.name)
    return dest


def jpeg_bytes(size=(40, 30), color=(200, 30, 60), **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", **save_kwargs)
    return buf.getvalue()


def add_bad_files(root: Path, class_name: str) -> dict[str, Path]:
    """A zero-byte, a truncated and a not-an-image file with a .jpg name, plus harmless non-images."""
    folder = root / "train" / class_name
    good = sorted(folder.glob("*.jpg"))[0].read_bytes()
    bad = {
        "empty": folder / ("e" * 32 + ".jpg"),
        "truncated": folder / ("t" * 32 + ".jpg"),
        "text": folder / ("x" * 32 + ".JPG"),
    }
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["text"].write_text("this is not a JPEG\n")
    (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "notes.txt").write_text("not an image, not an image extension\n")
    return bad


def read_marker(target: Path) -> dict:
    """The download marker ``download_inat12k`` leaves in ``target`` (url, size, sha256)."""
    return json.loads((target / MARKER_NAME).read_text())
