"""`inat-zoo predict`: top-k labels with probabilities from the model's own preprocessing (the one evaluation rule);
an unreadable file is one line and exit 2 (a named one before the model loads), or with --skip-bad skipped and
named."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.evaluate import evaluate_split, load_eval_data
from inat_zoo.loading import load_model
from inat_zoo.predict import predict

from .eval_helpers import (
    class_names,
    image_files,
    load_pil,
    make_run,
    png_bomb,
    timm_eval_transform,
    unreadable_files,
)
from .train_helpers import subprocess_env


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


def test_predict_json_one_image(run, sample_root, capsys):
    image, _ = image_files(sample_root, "val")[5]
    assert main(["predict", str(image), "--model", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image"] == str(image)
    top = result["top5"]
    probs = [entry["probability"] for entry in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert len({entry["label"] for entry in top}) == 5
    assert {entry["label"] for entry in top} <= set(class_names(sample_root))
    # the same numbers as timm's own pipeline: local-dir model + its eval transform
    model = timm.create_model(f"local-dir:{run}/model", pretrained=True).eval()
    transform = timm_eval_transform(timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        expected = model(transform(load_pil(image))[None]).softmax(1)[0]
    values, indices = expected.topk(5)
    assert [entry["label"] for entry in top] == [class_names(sample_root)[i] for i in indices]
    assert probs == pytest.approx(values.tolist(), abs=1e-5)


def test_predict_several_images_top_k(run, sample_root, capsys):
    images = [str(f) for f, _ in image_files(sample_root, "val")[:3]]
    assert main(["predict", *images, "--model", str(run), "--top-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == images
    assert all(len(r["top3"]) == 3 for r in results)
    assert predict(images[:1], str(run), top_k=2)[0]["top2"] == [
        {"label": e["label"], "probability": pytest.approx(e["probability"], abs=1e-6)} for e in results[0]["top3"][:2]
    ]
    # plain text: the image, then one "probability  label" line per label
    assert main(["predict", images[0], "--model", str(run), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 3
    assert lines[1].split()[1] == results[0]["top3"][0]["label"]


def test_an_unreadable_named_image_is_one_line_and_exit_2(run, tmp_path, capsys):
    """Whatever makes a file unreadable (missing, empty, not an image, truncated, over Pillow's pixel limit)."""
    files = {**unreadable_files(tmp_path), "missing": tmp_path / "missing.jpg"}
    for kind, path in files.items():
        assert main(["predict", str(path), "--model", str(run), "--json"]) == 2, kind
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, (kind, err)
        assert err.startswith(f"inat-zoo: error: {path}: "), (kind, err)
        assert "Traceback" not in err
    assert "too large to decode safely" in _error_of(run, files["decompression bomb"], capsys)
    assert _error_of(run, files["missing"], capsys).endswith(": no such file")
    assert _error_of(run, files["empty"], capsys).endswith(": empty file (0 bytes)")
    assert f"{files['truncated']}: truncated file (" in _error_of(run, files["truncated"], capsys)
    assert main(["predict", str(tmp_path / "missing.jpg"), "--model", str(run), "--top-k", "0"]) == 2


def test_an_image_pillow_only_warns_about_gives_one_line_too(run, tmp_path):
    """89-179 megapixels: Pillow warns (two lines of Python warning) and decodes; the command prints only its line.
    A real `inat-zoo` process: pytest would capture the warning before it reached stderr."""
    big = png_bomb(tmp_path / "big.png", side=10000)  # a header only: truncated once decoded
    cmd = [sys.executable, "-m", "inat_zoo.cli", "predict", str(big), "--model", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"inat-zoo: error: {big}: ") and done.stderr.count("\n") == 1, done.stderr


def _error_of(run, path, capsys) -> str:
    assert main(["predict", str(path), "--model", str(run)]) == 2
    return capsys.readouterr().err.strip()


def test_a_bad_image_next_to_good_ones_stops_before_the_model_loads(run, sample_root, tmp_path, capsys, monkeypatch):
    import inat_zoo.predict as predict_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when a named image is unreadable")

    monkeypatch.setattr(predict_module, "load_model", no_model)
    good = str(image_files(sample_root, "val")[0][0])
    bomb = unreadable_files(tmp_path)["decompression bomb"]
    assert main(["predict", good, str(bomb), "--model", str(run)]) == 2
    assert capsys.readouterr().err.startswith(f"inat-zoo: error: {bomb}: too large to decode safely")


def test_predict_on_a_folder_agrees_with_the_evaluation_bit_for_bit(run, sample_root, capsys):
    """The test folder through predict gives the evaluation's own probabilities: one rule, same batches."""
    results = predict([sample_root / "val"], str(run), top_k=10)
    files = [str(f) for f, _ in image_files(sample_root, "val")]
    assert [r["image"] for r in results] == files
    loaded = load_model(str(run))
    evaluation = evaluate_split(loaded, load_eval_data(loaded, None, "test"), progress=False)
    probs = evaluation.logits.softmax(1)
    names = class_names(sample_root)
    for row, result in zip(probs, results, strict=True):
        by_label = {e["label"]: e["probability"] for e in result["top10"]}
        assert [by_label[name] for name in names] == row.tolist()  # exactly, not approximately
    assert main(["predict", str(sample_root / "val"), "--model", str(run), "--json", "--top-k", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 40  # a folder gives a list


def test_predict_on_a_folder_with_skip_bad_skips_unreadable_files_and_names_them(run, sample_root, tmp_path, caplog):
    folder = tmp_path / "photos"
    shutil.copytree(sample_root / "val", folder)
    bad = unreadable_files(folder / "junk")
    with pytest.raises(UsageError, match=r"junk/.*\(one of 4 unreadable images; --skip-bad skips unreadable images\)"):
        predict([folder], str(run), top_k=1)  # without skip_bad: an error, as for a file named directly
    with caplog.at_level(logging.WARNING, logger="inat_zoo.predict"):
        results = predict([folder], str(run), top_k=1, skip_bad=True)
    assert len(results) == 40 and not {str(p) for p in bad.values()} & {r["image"] for r in results}
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 4 unreadable image(s)" in message and all(str(p) in message for p in bad.values())
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(Exception, match="folder holds no image files"):
        predict([empty], str(run))


def _rotated_photo(path: Path, color, seed: int) -> Path:
    """A 480x320 JPEG with a gradient and texture, stored sideways with EXIF orientation 6 (rotate to view)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 480)[None, :, None]
    pixels = np.asarray(color, dtype=float)[None, None] * (0.3 + 0.7 * ramp) + rng.normal(0, 25, (320, 480, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90, exif=exif)
    return path


def test_one_decode_rule_for_large_rotated_photos(tmp_path):
    """Large EXIF-rotated JPEGs: predict and the evaluation decode them in full and upright, identically."""
    from PIL import Image, ImageOps

    from .eval_helpers import COLORS, color_model, write_color_folder

    root = write_color_folder(tmp_path / "colors")
    for i, path in enumerate(sorted((root / "val").rglob("*.png"))):
        _rotated_photo(path.with_suffix(".jpg"), COLORS[path.parent.name], i)
        path.unlink()
    loaded = color_model()
    evaluation = evaluate_split(loaded, load_eval_data(loaded, root, "test"), progress=False)
    assert evaluation.metrics["accuracy"] == 1.0
    files = sorted((root / "val").rglob("*.jpg"))
    results = predict([root / "val"], loaded, top_k=3)
    assert [r["image"] for r in results] == [str(f) for f in files]
    for row, result in zip(evaluation.logits.softmax(1), results, strict=True):
        by_label = {e["label"]: e["probability"] for e in result["top3"]}
        assert [by_label[name] for name in COLORS] == row.tolist()

    # the reference: Pillow's full decode, EXIF applied, timm's evaluation transform
    transform = timm_eval_transform(loaded.data_config)

    def logits(images):
        with torch.no_grad():
            return loaded.model(torch.stack([transform(img.convert("RGB")) for img in images]))

    upright = logits([ImageOps.exif_transpose(Image.open(f)) for f in files])
    assert torch.allclose(evaluation.logits, upright, rtol=0, atol=1e-5)
    sideways = logits([Image.open(f) for f in files])
    drafted = []
    for f in files:
        img = Image.open(f)
        img.draft("RGB", (64, 64))  # a reduced-scale decode, as the training loop may do
        drafted.append(ImageOps.exif_transpose(img))
    for other in (sideways, logits(drafted)):  # the comparison above would notice either mistake
        assert not torch.allclose(evaluation.logits, other, rtol=0, atol=1e-3)
