"""Up-front checks of an image folder: layout mistakes and unreadable files.

``datasets`` loads a corrupt file without complaint and fails later, mid-epoch, when it is decoded; a nested folder
silently removes the label column. Both are found here before loading, and the per-file verdicts are cached (keyed
by path, size and mtime) so a 12k-image folder is verified once, not every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import UsageError

TRAIN_DIR = "train"
TEST_DIRS = ("val", "test")  # nature_12K calls its held-out test set val/
_CHECK_VERSION = 1


def image_extensions() -> frozenset[str]:
    """The lower-case suffixes (with dot) that ``datasets``' imagefolder treats as images, so both agree."""
    from .library_compat import imagefolder_extensions

    return frozenset("." + ext.lower().lstrip(".") for ext in imagefolder_extensions())


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


@dataclass
class SplitScan:
    """Image files of one split folder, grouped by class folder name."""

    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """The class folder names, sorted (the label order: class ``i`` is ``classes[i]``)."""
        return sorted(self.files)

    def all_files(self) -> list[Path]:
        """Every image file, class by class in ``classes`` order."""
        return [p for name in self.classes for p in self.files[name]]


def scan_split(folder: Path, extensions: frozenset[str]) -> SplitScan:
    """List ``folder/<class>/<image>``; raise :class:`UsageError` for stray images, nested folders, empty classes."""
    scan = SplitScan(folder)
    for entry in sorted(folder.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_file():
            if entry.suffix.lower() in extensions:
                raise UsageError(f"{entry}: image outside a class folder; expected {folder}/<class>/<image>")
            continue
        images: list[Path] = []
        for child in sorted(entry.iterdir()):
            if _is_hidden(child):
                continue
            if child.is_dir():
                raise UsageError(
                    f"{child}: nested folder inside class {entry.name!r}; expected {folder}/<class>/<image> "
                    "(datasets would silently drop the labels)"
                )
            if child.suffix.lower() in extensions:
                images.append(child)
        if not images:
            raise UsageError(f"{entry}: empty class folder (no images)")
        scan.files[entry.name] = images
    return scan


def find_test_folder(root: Path) -> Path | None:
    """``root/val`` (nature_12K's name for its test set) or ``root/test``, whichever exists first; else None."""
    for name in TEST_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def scan_root(root: Path) -> tuple[SplitScan, SplitScan | None]:
    """Scan ``root/train`` and ``root/val`` (or ``root/test``) and check that their classes agree."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    if not (root / TRAIN_DIR).is_dir():
        raise UsageError(f"{root}: missing {TRAIN_DIR}/ folder (expected {root}/train/<class>/<image>)")
    extensions = image_extensions()
    train = scan_split(root / TRAIN_DIR, extensions)
    if len(train.classes) < 2:
        raise UsageError(f"{train.folder}: found {len(train.classes)} class folder(s); need at least 2")
    test_folder = find_test_folder(root)
    test = scan_split(test_folder, extensions) if test_folder else None
    if test is not None:
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise UsageError(f"{test.folder}: classes not in {TRAIN_DIR}/: {', '.join(unknown)}")
    return train, test


def verify_image(path: str | os.PathLike) -> str | None:
    """``None`` if the file decodes, else the reason. ``verify()`` misses truncation, so the file is also decoded
    (at reduced scale with ``draft``, which still reads every byte of a JPEG)."""
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (32, 32))
            img.load()
    except Exception as e:  # any decoder error means the file is unusable
        return f"{type(e).__name__}: {e}".strip()
    return None


def _cache_path(root: Path) -> Path:
    from .download import default_root

    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:20]
    return default_root() / "file_checks" / f"{key}.json"


def find_bad_files(
    root: Path, files: Sequence[Path], *, use_cache: bool = True, progress: bool = True
) -> dict[Path, str]:
    """Verify ``files`` (all under ``root``) in a thread pool; return ``{path: reason}`` of the unreadable ones.

    Verdicts are cached per file keyed by (size, mtime_ns); only new or changed files are decoded again.
    """
    cache_file = _cache_path(root)
    cached: dict[str, list] = {}
    if use_cache and cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            if data.get("version") == _CHECK_VERSION:
                cached = data.get("files", {})
        except (OSError, ValueError):
            cached = {}
    verdicts: dict[str, list] = {}
    todo: list[tuple[str, Path, int, int]] = []
    for path in files:
        st = path.stat()
        rel = path.relative_to(root).as_posix()
        hit = cached.get(rel)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            verdicts[rel] = hit
        else:
            todo.append((rel, path, st.st_size, st.st_mtime_ns))
    if todo:
        from tqdm.auto import tqdm

        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
            reasons = pool.map(verify_image, [t[1] for t in todo], chunksize=16)
            bar = tqdm(reasons, total=len(todo), desc="checking images", unit="img", disable=not progress)
            for (rel, _path, size, mtime), reason in zip(todo, bar, strict=True):
                verdicts[rel] = [size, mtime, reason]
        if use_cache:
            try:
                atomic_write_json(cache_file, {"version": _CHECK_VERSION, "root": str(root), "files": verdicts}, None)
            except OSError:
                pass  # a read-only cache only costs speed next time
    return {root / rel: v[2] for rel, v in verdicts.items() if v[2] is not None}


def format_paths(paths: Iterable[Path], limit: int = 20) -> str:
    """The sorted ``paths`` comma-separated for one message line, the first ``limit`` shown and the rest counted."""
    paths = sorted(str(p) for p in paths)
    shown = ", ".join(paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


@dataclass
class FolderReport:
    """What ``inat-zoo data check`` prints: image counts per split and class, and the unreadable files."""

    root: Path
    counts: dict[str, dict[str, int]]
    bad_files: dict[Path, str]

    def format(self) -> str:
        """The report as the indented text ``inat-zoo data check`` prints."""
        lines = [f"{self.root}"]
        for split, per_class in self.counts.items():
            total = sum(per_class.values())
            lines.append(f"  {split}/: {total} images in {len(per_class)} classes")
            lines.extend(f"    {name}: {n}" for name, n in per_class.items())
        if self.bad_files:
            lines.append(f"  {len(self.bad_files)} unreadable file(s), skipped when loading:")
            lines.extend(f"    {p}: {reason}" for p, reason in sorted(self.bad_files.items()))
        else:
            lines.append("  no unreadable files")
        return "\n".join(lines)


def check_folder(root: str | os.PathLike, *, use_cache: bool = True, progress: bool = True) -> FolderReport:
    """Scan and verify a folder in the nature_12K layout without loading it; raise :class:`UsageError` on layout
    mistakes, report unreadable files."""
    root = Path(root)
    train, test = scan_root(root)
    splits = [train] + ([test] if test else [])
    files = [p for s in splits for p in s.all_files()]
    bad = find_bad_files(root, files, use_cache=use_cache, progress=progress)
    counts = {s.folder.name: {c: sum(p not in bad for p in s.files[c]) for c in s.classes} for s in splits}
    return FolderReport(root, counts, bad)
