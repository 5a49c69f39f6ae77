"""Download, verify and extract against a real HTTP server on 127.0.0.1 (Range support written here)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inat_zoo.cli import main
from inat_zoo.data.download import MARKER_NAME, download_inat12k
from inat_zoo.errors import UsageError

from .data_helpers import read_marker


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv: _Server = self.server  # type: ignore[assignment]
        srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if self.path not in srv.payloads:
            self.send_error(404)
            return
        data = srv.payloads[self.path]
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if srv.drops:  # send part of the body, then cut the connection
            cut = srv.drops.pop(0)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.payloads: dict[str, bytes] = {}
        self.drops: list[int] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _tiny_jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (seed * 40 % 256, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _nature_zip(n_files: int = 24) -> tuple[bytes, dict[str, bytes]]:
    """A zip in the nature_12K layout; returns (archive bytes, {relative path inside inaturalist_12K: bytes})."""
    files = {}
    for i in range(n_files):
        split = "train" if i % 4 else "val"
        files[f"{split}/class_{i % 3}/{i:032x}.jpg"] = _tiny_jpeg(i) + bytes(800)  # padding: a body worth cutting
    members = {"inaturalist_12K/": b"", "inaturalist_12K/train/.DS_Store": b"\0\0\0\1Bud1"}
    members.update({f"inaturalist_12K/{k}": v for k, v in files.items()})
    return _zip(members), files


def _assert_extracted(target: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (target / rel).read_bytes() == data
    assert (target / "train" / ".DS_Store").is_file()
    assert not any(p.name.endswith(".partial") for p in target.parent.iterdir())


def test_download_verify_extract_then_idempotent(server, tmp_path):
    payload, files = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    sha = hashlib.sha256(payload).hexdigest()
    target = download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), sha256=sha.upper(), progress=False)
    assert target == tmp_path / "inaturalist_12K"
    _assert_extracted(target, files)
    assert read_marker(target) == {"url": server.url("/nature_12K.zip"), "size": len(payload), "sha256": sha}
    assert not (tmp_path / "nature_12K.zip").exists()  # archive removed after a complete extraction
    assert len(server.requests) == 1 and server.requests[0]["range"] is None

    again = download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), sha256=sha, progress=False)
    assert again == target
    assert len(server.requests) == 1  # no request when the folder is complete


def test_resume_after_dropped_connection_within_one_call(server, tmp_path):
    payload, files = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    half = len(payload) // 2
    server.drops = [half]
    target = download_inat12k(
        tmp_path, url=server.url("/nature_12K.zip"), size=len(payload), progress=False, keep_archive=True
    )
    _assert_extracted(target, files)
    assert [r["range"] for r in server.requests] == [None, f"bytes={half}-"]
    assert (tmp_path / "nature_12K.zip").read_bytes() == payload


def test_resume_across_calls_and_network_error_is_a_usage_error(server, tmp_path):
    payload, files = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    cut = len(payload) // 3
    server.drops = [cut]
    url = server.url("/nature_12K.zip")
    with pytest.raises(UsageError, match="incomplete|failed"):
        download_inat12k(tmp_path, url=url, retries=0, progress=False)
    assert (tmp_path / "nature_12K.zip.part").stat().st_size == cut
    assert not (tmp_path / "inaturalist_12K").exists()

    target = download_inat12k(tmp_path, url=url, retries=0, progress=False)
    _assert_extracted(target, files)
    assert server.requests[-1]["range"] == f"bytes={cut}-"
    assert not (tmp_path / "nature_12K.zip.part").exists()


def test_wrong_sha256_refused_and_archive_deleted(server, tmp_path, capsys):
    payload, _ = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    url = server.url("/nature_12K.zip")
    code = main(["data", "download", "--root", str(tmp_path), "--url", url, "--sha256", "0" * 64])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars come before it
    assert code == 2
    assert last_line.startswith("inat-zoo: error: ") and "sha256" in last_line
    assert not (tmp_path / "inaturalist_12K").exists()
    assert not (tmp_path / "nature_12K.zip").exists()


def test_wrong_size_and_http_error(server, tmp_path):
    payload, _ = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    with pytest.raises(UsageError, match="expected"):
        download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), size=len(payload) + 1, progress=False)
    with pytest.raises(UsageError, match="HTTP 404"):
        download_inat12k(tmp_path / "b", url=server.url("/missing.zip"), progress=False)
    assert not (tmp_path / "inaturalist_12K").exists()


def test_unreachable_server_is_a_usage_error(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="download of .* failed"):
        download_inat12k(tmp_path, url=f"http://127.0.0.1:{port}/x.zip", retries=1, progress=False)


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/inat_zoo_abs_evil.txt", "inaturalist_12K/../../evil2.txt"])
def test_escaping_member_refused_before_anything_is_extracted(server, tmp_path, evil):
    members = {"inaturalist_12K/train/a/" + "1" * 32 + ".jpg": _tiny_jpeg(1), evil: b"owned"}
    server.payloads["/nature_12K.zip"] = _zip(members)
    root = tmp_path / "root"
    code = main(["data", "download", "--root", str(root), "--url", server.url("/nature_12K.zip")])
    assert code == 2
    assert not (root / "inaturalist_12K").exists()
    assert sorted(p.name for p in root.iterdir()) == ["nature_12K.zip"]  # no partial tree, nothing extracted
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "evil2.txt").exists()
    assert not Path("/tmp/inat_zoo_abs_evil.txt").exists()


def test_full_disk_refused_before_writing(server, tmp_path, monkeypatch):
    # The free-space query is the OS boundary; pretend the disk is nearly full.
    payload, _ = _nature_zip()
    server.payloads["/nature_12K.zip"] = payload
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("inat_zoo.data.download.shutil.disk_usage", lambda _p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(UsageError, match="not enough disk space"):
        download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), progress=False)
    assert not (tmp_path / "nature_12K.zip").exists() and not (tmp_path / "inaturalist_12K").exists()


def test_existing_foreign_folder_is_not_touched(server, tmp_path):
    (tmp_path / "inaturalist_12K" / "train").mkdir(parents=True)
    server.payloads["/nature_12K.zip"] = _nature_zip()[0]
    with pytest.raises(UsageError, match="not completed"):
        download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), progress=False)
    assert server.requests == []
    assert not (tmp_path / "inaturalist_12K" / MARKER_NAME).exists()


def test_archive_without_dataset_folder_refused(server, tmp_path):
    server.payloads["/nature_12K.zip"] = _zip({"other/train/a/x.jpg": _tiny_jpeg(2)})
    with pytest.raises(UsageError, match="no top-level inaturalist_12K"):
        download_inat12k(tmp_path, url=server.url("/nature_12K.zip"), progress=False)
    assert not (tmp_path / "inaturalist_12K").exists()
