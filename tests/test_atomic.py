"""Atomic writes: nothing half-written is ever visible, and finished files get ordinary permissions."""

import os
import stat

import pytest

from inat_zoo.atomic import atomic_directory, atomic_write_json, atomic_write_text


def test_write_text_and_json(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert path.read_text() == "hello"
    atomic_write_json(tmp_path / "m.json", {"x": 1})
    assert (tmp_path / "m.json").read_text() == '{\n  "x": 1\n}\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json"]  # no temporary files left


def test_failed_directory_leaves_nothing(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_directory_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as tmp:
            (tmp / "v2").write_text("2")
    assert [p.name for p in target.iterdir()] == ["v1"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in target.iterdir()] == ["v2"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
