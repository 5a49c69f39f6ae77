"""Fetch nature_12K.zip, verify it and extract it safely to ``<root>/inaturalist_12K``.

Resumes a partial download with HTTP Range (across retries and across runs), checks size and optionally sha256,
refuses archives whose members would land outside the target before extracting anything, and extracts into a
temporary folder that is renamed into place only when complete, so there is never a half tree. A completion marker
makes a second call a no-op without any request.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from ..atomic import atomic_write_json
from ..errors import UsageError

DEFAULT_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
DEFAULT_SIZE = 3_816_687_935
DATASET_DIRNAME = "inaturalist_12K"
ARCHIVE_NAME = "nature_12K.zip"
MARKER_NAME = ".inat_zoo_complete.json"
CACHE_ENV = "INAT_ZOO_CACHE"
_CHUNK = 1 << 20


def default_root() -> Path:
    """``$INAT_ZOO_CACHE`` or ``~/.cache/inat_zoo``: where the data set (and small caches) live by default."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "inat_zoo"


def default_data_dir() -> Path:
    """``<default_root()>/inaturalist_12K``: the default ``data.root`` of a recipe."""
    return default_root() / DATASET_DIRNAME


def is_complete(target: Path) -> bool:
    """Whether ``target`` holds a finished extraction (its marker file is written last)."""
    return (target / MARKER_NAME).is_file()


def _disk_error(e: OSError, where: Path) -> UsageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UsageError(f"disk full while writing {where}: {e.strerror}")
    return UsageError(f"cannot write {where}: {e}")


def _ensure_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UsageError(f"not enough disk space in {folder} for {what}: need {needed:,} bytes, {free:,} free")


def _fetch(url: str, part: Path, expected_size: int | None, progress: bool, timeout: float) -> int | None:
    """One HTTP attempt appending to ``part`` from its current size; returns the total size the server announced."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have == expected_size:
        return expected_size
    headers = {"User-Agent": "inat-zoo"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and (expected_size is None or have == expected_size):
            return have  # range past the end: the file is already whole
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else expected_size
        if expected_size is not None and total is not None and total != expected_size:
            raise UsageError(f"{url}: server announces {total:,} bytes, expected {expected_size:,}")
        if total is not None:
            _ensure_space(part.parent, total - have, f"downloading {url}")
        mode = "ab" if have else "wb"
        with (
            open(part, mode) as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=not progress) as bar,
        ):
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    return total


def _download(url: str, archive: Path, size: int | None, retries: int, progress: bool, timeout: float) -> None:
    """Download ``url`` to ``archive`` via ``archive.part``, resuming after dropped connections."""
    part = archive.with_name(archive.name + ".part")
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            total = _fetch(url, part, size, progress, timeout)
        except urllib.error.HTTPError as e:
            raise UsageError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except OSError as e:
            if isinstance(e, (socket.timeout, ConnectionError, urllib.error.URLError)) or not e.errno:
                if attempt + 1 < attempts:
                    continue
                raise UsageError(f"download of {url} failed: {getattr(e, 'reason', e)}") from e
            raise _disk_error(e, part) from e
        except HTTPException as e:  # IncompleteRead and friends: the connection dropped mid-body
            if attempt + 1 < attempts:
                continue
            raise UsageError(f"download of {url} failed: {type(e).__name__}: {e}") from e
        got = part.stat().st_size
        if total is not None and got < total:
            if attempt + 1 < attempts:
                continue  # the body ended early without an error: resume
            raise UsageError(f"download of {url} incomplete: {got:,} of {total:,} bytes")
        os.replace(part, archive)
        return


def sha256_of(path: Path, progress: bool = True) -> str:
    """The SHA-256 of the file at ``path`` as 64 hex digits, read in chunks (a progress bar when ``progress``)."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="sha256", disable=not progress) as bar,
    ):
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _verify(archive: Path, size: int | None, sha256: str | None, progress: bool) -> None:
    """Check size and checksum; a bad archive is deleted so the next run downloads it afresh."""
    got = archive.stat().st_size
    if size is not None and got != size:
        archive.unlink()
        raise UsageError(f"{archive}: size {got:,} bytes, expected {size:,}; deleted, run the download again")
    if sha256:
        actual = sha256_of(archive, progress)
        if actual != sha256.lower():
            archive.unlink()
            raise UsageError(f"{archive}: sha256 {actual} does not match the expected {sha256.lower()}; deleted")


def unsafe_members(zf: zipfile.ZipFile) -> list[str]:
    """Members that would be written outside the extraction folder (absolute, drive, ``..``) or are symlinks."""
    bad = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts or is_link:
            bad.append(info.filename)
    return bad


def extract_archive(archive: Path, target: Path, marker: dict, progress: bool = True) -> Path:
    """Extract ``archive`` (whose top folder is ``target.name``) to ``target`` all at once or not at all."""
    from tqdm.auto import tqdm

    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise UsageError(f"{archive}: not a valid zip archive ({e})") from e
    with zf:
        bad = unsafe_members(zf)
        if bad:
            raise UsageError(f"{archive}: refusing to extract members outside the target: {', '.join(bad[:5])}")
        members = zf.infolist()
        if not any(PurePosixPath(m.filename).parts[:1] == (target.name,) for m in members):
            raise UsageError(f"{archive}: no top-level {target.name}/ folder in the archive")
        _ensure_space(target.parent, sum(m.file_size for m in members), f"extracting {archive.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            with tqdm(total=len(members), unit="file", desc="extracting", disable=not progress) as bar:
                for member in members:
                    zf.extract(member, tmp)
                    bar.update()
            extracted = tmp / target.name
            if not (extracted / "train").is_dir():
                raise UsageError(f"{archive}: {target.name}/train/ missing in the archive")
            atomic_write_json(extracted / MARKER_NAME, marker)
            os.replace(extracted, target)
        except OSError as e:
            raise _disk_error(e, target) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_inat12k(
    root: str | os.PathLike | None = None,
    *,
    url: str = DEFAULT_URL,
    size: int | None = None,
    sha256: str | None = None,
    keep_archive: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Make ``<root>/inaturalist_12K`` exist (download, verify, extract) and return it.

    ``size`` defaults to the known size of the official archive when ``url`` is the default, else to the
    ``Content-Length`` the server sends. Returns at once, without any request, when the folder is complete.
    """
    root = Path(root) if root is not None else default_root()
    target = root / DATASET_DIRNAME
    if is_complete(target):
        return target
    if target.exists():
        raise UsageError(
            f"{target} exists but was not completed by `inat-zoo data download`; "
            "remove it to download again, or use it directly as data.root"
        )
    if size is None and url == DEFAULT_URL:
        size = DEFAULT_SIZE
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _disk_error(e, root) from e
    archive = root / ARCHIVE_NAME
    if not archive.exists():
        _download(url, archive, size, retries, progress, timeout)
    _verify(archive, size, sha256, progress)
    marker = {"url": url, "size": archive.stat().st_size, "sha256": sha256.lower() if sha256 else None}
    extract_archive(archive, target, marker, progress)
    if not keep_archive:
        archive.unlink()
    return target
