"""Write files and folders so that a crash never leaves a half-written one behind.

Everything is written to a temporary sibling first and moved into place with ``os.replace`` (atomic on POSIX).
What is moved into place has the mode an ordinary ``open``/``mkdir`` would give it under the process umask (read
without changing it), whatever temporary-file machinery wrote it: see :func:`apply_default_modes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it, and while it is set to anything else, files that other threads
    create (DataLoader pin-memory threads, W&B, a datasets writer) get the wrong mode. Linux shows it in
    ``/proc/self/status`` (``Umask:``, since 4.7); elsewhere a probe file created with ``os.open(..., 0o777)`` shows
    it in its mode.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _probe_umask()


def _probe_umask() -> int:
    with tempfile.TemporaryDirectory(prefix=".umask_probe_") as folder:
        probe = os.path.join(folder, "probe")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777))
        return 0o777 & ~stat.S_IMODE(os.stat(probe).st_mode)


def default_mode(is_dir: bool, executable: bool = False) -> int:
    """The mode ``open``/``mkdir`` give a new file or folder under the current umask (0o644 / 0o755 under 022)."""
    return (0o777 if is_dir or executable else 0o666) & ~current_umask()


def apply_default_modes(path: str | os.PathLike) -> None:
    """Give ``path`` and, for a folder, everything under it the mode a plain ``open``/``mkdir`` would have given.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries, and libraries that write through them (safetensors'
    ``save_file``, so timm's ``save_for_hf`` and accelerate's ``save_state``) leave weights 0600 next to 0644
    files: a shared run folder that colleagues cannot read. Call it on what the project itself just wrote, before
    it is renamed into place. Symbolic links are left alone.
    """
    umask = current_umask()
    root = Path(path)
    for entry in [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]:
        if entry.is_symlink():
            continue
        mode = os.stat(entry).st_mode
        full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
        os.chmod(entry, full & ~umask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename; parents are created); returns the path.

    Readers see the old file or the new one, never a partial write; the file gets the umask's usual mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(is_dir=False))  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON plus a newline to ``path`` atomically (key order kept); returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``, on error it is removed.

    With ``overwrite=True`` an existing ``path`` is replaced only after the new content is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        apply_default_modes(tmp)  # the folder (mkdtemp: 0700) and whatever libraries wrote into it
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
