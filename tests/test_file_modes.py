"""Every file the project writes follows the umask: a shared run folder is readable wherever its owner's umask says.

safetensors (so timm's ``save_for_hf`` and accelerate's ``save_state``) writes through a 0600 temporary file; the
weights of a run used to be 0600 next to 0644 files. The umask is read, never set, by the project (other threads
create files meanwhile); only this test sets it, around the commands it runs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from inat_zoo.atomic import apply_default_modes, atomic_directory, atomic_write_text, current_umask
from inat_zoo.cli import main

from .train_helpers import tiny_recipe, write_recipe


def _wrong_modes(folder: Path, umask: int) -> list[str]:
    """``path: mode`` for every entry under ``folder`` (itself included) whose mode is not the umask's."""
    wrong = []
    for entry in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(entry.stat().st_mode)
        expected = (0o777 if entry.is_dir() else 0o666) & ~umask
        if mode != expected:
            wrong.append(f"{entry.relative_to(folder.parent)}: {oct(mode)} (expected {oct(expected)})")
    return wrong


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_run_checkpoints_model_eval_explain_and_hub_folder_follow_the_umask(sample_root, tmp_path, umask):
    run, hub = tmp_path / "run", tmp_path / "hub"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, run, train={"epochs": 1}))
    previous = os.umask(umask)
    try:
        assert main(["train", str(recipe)]) == 0
        assert main(["evaluate", str(run)]) == 0
        assert main(["explain", str(run), "--images", "2"]) == 0
        assert main(["push", str(run), "--repo-id", "me/inat12k-tiny", "--dry-run", str(hub)]) == 0
    finally:
        os.umask(previous)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"run/model/model.safetensors", "hub/model.safetensors", "run/eval/metrics.json"} <= written
    assert any(p.startswith("run/checkpoints/checkpoint_") and p.endswith(".safetensors") for p in written)
    assert any(p.startswith("run/explain/") for p in written)
    assert _wrong_modes(run, umask) == [] and _wrong_modes(hub, umask) == []


def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch):
    """os.umask would set it for a moment, and a file another thread creates then gets the wrong mode."""
    previous = os.umask(0o027)
    try:
        calls = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        assert current_umask() == 0o027
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inner").mkdir()
            (tmp / "inner" / "w.bin").write_bytes(b"w")
            os.chmod(tmp / "inner" / "w.bin", 0o600)  # as safetensors leaves its output
        assert calls == []
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert _wrong_modes(tmp_path / "folder", 0o027) == []


def test_the_probe_fallback_agrees_with_proc(tmp_path):
    """Where /proc is missing, a probe file's mode gives the umask."""
    from inat_zoo import atomic

    previous = os.umask(0o037)
    try:
        assert atomic._probe_umask() == 0o037 == current_umask()
        target = tmp_path / "x.bin"
        target.write_bytes(b"")
        os.chmod(target, 0o600)
        apply_default_modes(target)
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(previous)
