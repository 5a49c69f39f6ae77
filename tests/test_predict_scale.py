"""`inat-zoo predict` at scale: glob patterns, --csv (atomic, one row per image), --skip-bad, --device auto and the
progress bar, as a user runs them."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import inat_zoo.predict as predict_module
from inat_zoo.cli import main
from inat_zoo.predict import expand_images, predict, resolve_device

from .eval_helpers import image_files, make_run, unreadable_files


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


@pytest.fixture
def photos(sample_root, tmp_path) -> Path:
    """A copy of the test images under photos/<class>/, plus one text file that no pattern below should pick."""
    folder = tmp_path / "photos"
    shutil.copytree(sample_root / "val", folder)
    (folder / "README.txt").write_text("not a photo")
    return folder


def test_a_glob_pattern_csv_and_json_agree_with_the_folder(run, photos, tmp_path, capsys):
    pattern = str(photos / "**" / "*.jpg")
    out = tmp_path / "results" / "predictions.csv"
    out.parent.mkdir()
    assert main(["predict", pattern, "--model", str(run), "--csv", str(out), "--top-k", "3", "--json"]) == 0
    printed, err = capsys.readouterr()
    results = json.loads(printed)
    assert f"wrote 40 prediction(s) to {out}" in err
    files = sorted(str(p) for p in photos.rglob("*.jpg"))
    assert [r["image"] for r in results] == files  # sorted, recursive, the .txt left out by the pattern
    assert results == predict([photos], str(run), top_k=3)  # the folder gives the same, in the same order
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "label_1", "probability_1", "label_2", "probability_2", "label_3", "probability_3"]
    assert len(rows) == 41 and [row[0] for row in rows[1:]] == files
    for row, result in zip(rows[1:], results, strict=True):
        assert row[1::2] == [e["label"] for e in result["top3"]]
        assert [float(p) for p in row[2::2]] == [e["probability"] for e in result["top3"]]  # exact round trip
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # no temporary file left


def test_an_image_reached_twice_is_predicted_once_and_empty_patterns_are_errors(run, photos, capsys):
    first = sorted(photos.rglob("*.jpg"))[0]
    expanded = expand_images([first, photos, str(photos / "*" / "*.jpg")])
    assert [p for p, _ in expanded] == [first] + [p for p in sorted(photos.rglob("*.jpg")) if p != first]
    assert [named for _, named in expanded] == [True] + [False] * 39
    assert main(["predict", str(photos / "*.png"), "--model", str(run)]) == 2
    assert capsys.readouterr().err == f"inat-zoo: error: {photos / '*.png'}: the pattern matches no file\n"


def test_an_unreadable_image_in_a_folder_or_pattern_stops_before_anything_is_written(run, photos, tmp_path, capsys):
    bad = unreadable_files(photos / "junk")
    out = tmp_path / "predictions.csv"
    everything = str(photos / "**" / "*")  # the pattern also picks README.txt; the folder only image files
    for images, count in ((str(photos), 4), (everything, 5)):
        assert main(["predict", images, "--model", str(run), "--csv", str(out)]) == 2
        printed, err = capsys.readouterr()
        assert printed == "" and err.count("\n") == 1 and err.endswith("--skip-bad skips unreadable images)\n")
        assert err.startswith("inat-zoo: error: ") and f"(one of {count} unreadable images;" in err
        assert not out.exists()
    assert main(["predict", everything, "--model", str(run), "--csv", str(out), "--skip-bad"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert len(summary) == 1 and summary[0].startswith("inat-zoo predict: skipped 5 unreadable image(s): ")
    assert all(str(p) in summary[0] for p in bad.values()) and str(photos / "README.txt") in summary[0]
    assert len(list(csv.reader(out.open()))) == 41


def test_skip_bad_also_skips_a_bad_file_named_directly(run, sample_root, tmp_path, capsys):
    good = str(image_files(sample_root, "val")[0][0])
    empty = unreadable_files(tmp_path)["empty"]
    assert main(["predict", good, str(empty), "--model", str(run), "--skip-bad", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["image"] for r in json.loads(out)] == [good]
    assert f"skipped 1 unreadable image(s): {empty} (empty file (0 bytes))" in err


def test_only_unreadable_images_with_skip_bad_are_named(run, tmp_path, capsys):
    bad = unreadable_files(tmp_path / "bad")
    named = [str(bad["not an image"]), str(bad["truncated"])]
    assert main(["predict", *named, "--model", str(run), "--skip-bad"]) == 2
    printed, err = capsys.readouterr()
    assert printed == "" and err.count("\n") == 1, err
    assert err.startswith("inat-zoo: error: none of the 2 images could be read: ")
    assert all(f"{name} (" in err for name in named)  # as the partial case's summary: name (reason), ...


def test_csv_in_missing_folders_is_made_like_export_out(run, sample_root, tmp_path, capsys):
    image = str(image_files(sample_root, "val")[0][0])
    out = tmp_path / "nodir2" / "deeper" / "p.csv"
    assert main(["predict", image, "--model", str(run), "--csv", str(out)]) == 0
    assert len(list(csv.reader(out.open()))) == 2 and sorted(p.name for p in out.parent.iterdir()) == ["p.csv"]
    assert f"wrote 1 prediction(s) to {out}" in capsys.readouterr().err


def test_csv_mistakes_are_found_before_the_model_loads(run, sample_root, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(predict_module, "load_model", no_model)
    image = str(image_files(sample_root, "val")[0][0])
    (tmp_path / "afile").write_text("not a folder")
    under_a_file = tmp_path / "afile" / "no" / "p.csv"
    assert main(["predict", image, "--model", str(run), "--csv", str(under_a_file)]) == 2
    assert capsys.readouterr().err == f"inat-zoo: error: --csv {under_a_file}: {tmp_path / 'afile'} is a file, " \
        "not a folder\n"  # fmt: skip
    assert main(["predict", image, "--model", str(run), "--csv", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["predict", image, "--model", str(run), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "inat-zoo: error: --batch-size must be at least 1, got 0\n"


def test_device_auto_and_the_progress_bar_on_long_runs(run, photos, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        for present, device in ((True, "cuda"), (False, "cpu")):
            patch.setattr(torch.cuda, "is_available", lambda present=present: present)
            assert resolve_device("auto") == resolve_device(None) == device
            assert resolve_device("cpu") == "cpu"
    seen = []
    real = predict_module.load_model
    monkeypatch.setattr(predict_module, "load_model", lambda ref, device: seen.append(device) or real(ref, device))
    assert main(["predict", str(photos / "*" / "*.jpg"), "--model", str(run), "--batch-size", "16"]) == 0
    assert seen == [resolve_device("auto")]  # --device auto is the default
    assert "predict:" in capsys.readouterr().err  # tqdm's bar, on stderr: 40 images in 3 batches
    assert main(["predict", str(sorted(photos.rglob("*.jpg"))[0]), "--model", str(run)]) == 0
    assert capsys.readouterr().err == ""  # one batch: no bar
