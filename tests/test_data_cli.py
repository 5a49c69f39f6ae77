"""`inat-zoo data ...` through inat_zoo.cli.main: exit codes, one-line errors, printed reports."""

from __future__ import annotations

import re

import pytest

from inat_zoo.cli import main

from .data_helpers import add_bad_files, copy_subset


def test_check_missing_root_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["data", "check", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"inat-zoo: error: {missing}: no such folder\n"
    assert captured.out == ""


def test_check_reports_counts(sample_root, capsys):
    assert main(["data", "check", str(sample_root)]) == 0
    out = capsys.readouterr().out
    assert "train/: 120 images in 10 classes" in out and "val/: 40 images in 10 classes" in out
    assert "    synth_waves: 12" in out and "no unreadable files" in out


def test_check_names_bad_files_and_strict_fails(sample_root, tmp_path, capsys):
    root = copy_subset(sample_root, tmp_path / "data", classes=2, train=3, val=1)
    bad = add_bad_files(root, "synth_crosses")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 unreadable file(s)" in out and all(str(p) in out for p in bad.values())
    assert "synth_crosses: 3" in out  # the good ones only
    assert main(["data", "check", str(root), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("inat-zoo: error: ") and "3 unreadable" in err[-1]


def test_sample_then_prepare(tmp_path, capsys):
    root = tmp_path / "demo"
    args = ["--train-per-class", "3", "--test-per-class", "1", "--min-side", "32", "--max-side", "40"]
    assert main(["data", "sample", "--root", str(root), *args]) == 0
    assert len(list((root / "train").glob("synth_*/*.jpg"))) == 30
    assert all(re.fullmatch(r"[0-9a-f]{32}\.jpg", p.name) for p in root.glob("*/*/*"))
    assert main(["data", "sample", "--root", str(root)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    code = main(["data", "prepare", str(root), "--image-size", "24", "--val-fraction", "0.34"])
    assert code == 0
    out = capsys.readouterr().out
    assert "short side 28 px" in out and "train: 19, validation: 11, test: 10" in out


def test_unknown_action_exit_2(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's own exit, with the tool's message format
        main(["data", "shuffle"])
    assert info.value.code == 2
    assert "inat-zoo: error: argument ACTION: invalid choice: 'shuffle'" in capsys.readouterr().err
