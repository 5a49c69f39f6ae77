"""A procedurally generated 10-class image folder in exactly the nature_12K layout.

It is the data of the tests and of ``make demo``: ``root/train/<class>/<32-hex>.jpg`` and ``root/val/...``, varied
sizes and orientations, real JPEGs. Each class has its own structure (discs, stripes, rings, ...) drawn with random
position, scale, angle and colours plus noise, so a small CNN learns it in a few epochs, while the foreground hue is
only a weak cue. Class names start with ``synth_`` so nobody mistakes it for the real taxa.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UsageError

SPLITS = ("train", "val")  # the nature_12K folder names; val/ is the held-out test set


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in units of the short side, centred, so patterns keep their shape whatever the aspect."""
    s = min(h, w) / 2.0
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (x - w / 2.0) / s, (y - h / 2.0) / s


def _rotate(x: np.ndarray, y: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return c * x + s * y, -s * x + c * y


def _discs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _grid(h, w)
    mask = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.25, 0.55)
        mask = np.maximum(mask, ((x - cx) ** 2 + (y - cy) ** 2 < r * r).astype(np.float32))
    return mask


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _rotate(*_grid(h, w), rng.uniform(0, np.pi))
    return (np.sin(x * rng.uniform(7, 12) + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _rotate(*_grid(h, w), rng.uniform(0, np.pi / 2))
    f, p = rng.uniform(5, 8), rng.uniform(0, 2 * np.pi, size=2)
    return (np.sin(x * f + p[0]) * np.sin(y * f + p[1]) > 0).astype(np.float32)


def _rings(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _grid(h, w)
    r = np.hypot(x - rng.uniform(-0.4, 0.4), y - rng.uniform(-0.4, 0.4))
    return (np.sin(r * rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _spiral(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _grid(h, w)
    x, y = x - rng.uniform(-0.3, 0.3), y - rng.uniform(-0.3, 0.3)
    phase = np.arctan2(y, x) * rng.choice([-3, 3]) + np.hypot(x, y) * rng.uniform(6, 10)
    return (np.sin(phase + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _waves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _rotate(*_grid(h, w), rng.uniform(0, np.pi))
    bend = rng.uniform(0.25, 0.4) * np.sin(x * rng.uniform(3, 5) + rng.uniform(0, 2 * np.pi))
    return (np.sin((y + bend) * rng.uniform(5, 8)) > 0.3).astype(np.float32)


def _dots(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _rotate(*_grid(h, w), rng.uniform(0, np.pi / 2))
    period = rng.uniform(0.35, 0.5)
    dx = (x / period + rng.uniform(0, 1)) % 1.0 - 0.5
    dy = (y / period + rng.uniform(0, 1)) % 1.0 - 0.5
    return (dx * dx + dy * dy < rng.uniform(0.03, 0.06)).astype(np.float32)


def _polygons(sides: int) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """One to three filled regular polygons (triangles, squares) with random centre, size and rotation."""

    def draw(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        img = Image.new("L", (w, h), 0)
        pen = ImageDraw.Draw(img)
        s = min(h, w)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
            r, a0 = rng.uniform(0.2, 0.4) * s, rng.uniform(0, 2 * np.pi)
            angles = a0 + 2 * np.pi * np.arange(sides) / sides
            pen.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles], fill=255)
        return np.asarray(img, np.float32) / 255.0

    return draw


def _crosses(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _grid(h, w)
    mask = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, 3)):
        u, v = _rotate(x - rng.uniform(-0.4, 0.4), y - rng.uniform(-0.4, 0.4), rng.uniform(0, np.pi / 2))
        arm, bar = rng.uniform(0.45, 0.7), rng.uniform(0.1, 0.16)
        plus = ((np.abs(u) < arm) & (np.abs(v) < bar)) | ((np.abs(v) < arm) & (np.abs(u) < bar))
        mask = np.maximum(mask, plus.astype(np.float32))
    return mask


# class name -> mask generator; sorted names are the ClassLabel order
PATTERNS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "synth_checker": _checker,
    "synth_crosses": _crosses,
    "synth_discs": _discs,
    "synth_dots": _dots,
    "synth_rings": _rings,
    "synth_spiral": _spiral,
    "synth_squares": _polygons(4),
    "synth_stripes": _stripes,
    "synth_triangles": _polygons(3),
    "synth_waves": _waves,
}
CLASS_NAMES: tuple[str, ...] = tuple(sorted(PATTERNS))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def render(class_name: str, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One RGB image of ``class_name``: pattern mask, a loosely class-tied foreground colour, background gradient,
    and pixel noise."""
    mask = PATTERNS[class_name](rng, height, width)[..., None]
    base_hue = CLASS_NAMES.index(class_name) / len(CLASS_NAMES)
    fg = _hsv(base_hue + rng.normal(0, 0.08), rng.uniform(0.45, 0.9), rng.uniform(0.6, 1.0))
    bg_a = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5))
    bg_b = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5))
    x, y = _rotate(*_grid(height, width), rng.uniform(0, 2 * np.pi))
    t = np.clip((x + 1) / 2, 0, 1)[..., None]
    background = bg_a * (1 - t) + bg_b * t
    pixels = background * (1 - mask) + fg * mask
    pixels += rng.normal(0, rng.uniform(4, 14), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _size(rng: np.random.Generator, index: int, min_side: int, max_side: int) -> tuple[int, int]:
    """(width, height): alternating landscape and portrait, both sides within [min_side, max_side]."""
    long = int(rng.integers(min_side, max_side + 1))
    short = int(rng.integers(min_side, long + 1))
    return (long, short) if index % 2 == 0 else (short, long)


def write_sample(
    root: str | os.PathLike,
    *,
    train_per_class: int = 60,
    test_per_class: int = 20,
    min_side: int = 96,
    max_side: int = 160,
    seed: int = 0,
) -> Path:
    """Write the synthetic folder into ``root`` (``root/train``, ``root/val``) and return ``root``.

    Deterministic for a seed. Refuses to touch a ``root`` that already holds ``train/`` or ``val/``; the splits are
    written to a temporary folder first and moved in only when complete.
    """
    root = Path(root)
    if train_per_class < 1 or test_per_class < 1:
        raise UsageError(
            f"sample: train and test images per class must be >= 1 (got {train_per_class}, {test_per_class})"
        )
    if not 8 <= min_side <= max_side:
        raise UsageError(f"sample: need 8 <= min_side <= max_side (got {min_side}, {max_side})")
    if root.exists() and not root.is_dir():
        raise UsageError(f"sample: --root {root} exists and is not a folder")
    existing = [root / s for s in SPLITS if (root / s).exists()]
    if existing:
        raise UsageError(f"sample: {existing[0]} already exists; choose an empty --root")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {"train": train_per_class, "val": test_per_class}
    tmp = Path(tempfile.mkdtemp(prefix=".sample.", suffix=".partial", dir=root))
    try:
        for split in SPLITS:
            for name in CLASS_NAMES:
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(counts[split]):
                    width, height = _size(rng, i, min_side, max_side)
                    image = render(name, rng, width, height)
                    image.save(folder / f"{rng.bytes(16).hex()}.jpg", quality=90)
        for split in SPLITS:
            os.replace(tmp / split, root / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
