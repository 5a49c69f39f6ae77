"""`inat-zoo data ...` through inat_zoo.cli.main: exit codes, one-line errors, printed reports."""

from __future__ import annotations

import re

import pytest

from inat_zoo.cli import main
from inat_zoo.data import crop_decode

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
    assert f"training crops of JPEGs decode with: {crop_decode.JPEG_DECODER}\n" in out  # which decoder is built


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


def test_prepare_with_a_models_crop_pct_is_the_cache_the_trainer_reuses(tmp_path, capsys, monkeypatch):
    from inat_zoo.data import load_inat12k, prepare_dataset
    from inat_zoo.data import prepare as prepare_module
    from inat_zoo.data.transforms import decode_short_side

    root = tmp_path / "demo"
    args = ["--train-per-class", "3", "--test-per-class", "1", "--min-side", "40", "--max-side", "48"]
    assert main(["data", "sample", "--root", str(root), *args]) == 0
    prepare = ["data", "prepare", str(root), "--image-size", "24"]
    assert main([*prepare, "--val-fraction", "0.34", "--crop-pct", "0.75"]) == 0
    assert main([*prepare, "--crop-pct", "1.5"]) == 2
    out, err = capsys.readouterr()
    assert "short side 32 px" in out and "inat-zoo: error: --crop-pct must be in (0, 1], got 1.5" in err

    trainer_side = decode_short_side({"input_size": (3, 24, 24), "crop_pct": 0.75})  # what train.py asks for
    calls = []
    real = prepare_module._shrink_batch
    monkeypatch.setattr(prepare_module, "_shrink_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    prepare_dataset(load_inat12k(root, val_fraction=0.34, seed=42), short_side=trainer_side)
    assert trainer_side == 32 and calls == []  # found in the Arrow cache the CLI wrote


def test_unknown_action_exit_2(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's own exit, with the tool's message format
        main(["data", "shuffle"])
    assert info.value.code == 2
    assert "inat-zoo: error: argument ACTION: invalid choice: 'shuffle'" in capsys.readouterr().err
