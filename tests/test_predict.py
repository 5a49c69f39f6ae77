"""`inat-zoo predict`: top-k labels with probabilities from the model's own preprocessing; bad files refused."""

import json
from pathlib import Path

import pytest
import timm
import torch

from inat_zoo.cli import main
from inat_zoo.predict import predict

from .eval_helpers import (
    class_names,
    image_files,
    load_pil,
    make_run,
    timm_eval_transform,
)


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


def test_bad_images_are_usage_errors(run, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.jpg"), "--model", str(run)]) == 2
    assert "no such image" in capsys.readouterr().err
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")
    assert main(["predict", str(fake), "--model", str(run), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error:") and "fake.jpg is not a readable image" in err
    assert main(["predict", str(fake), "--model", str(run), "--top-k", "0"]) == 2
