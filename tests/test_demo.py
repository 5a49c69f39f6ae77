"""The main job end to end, as `make demo` runs it: train -> evaluate -> explain -> Hub folder -> load back."""

import json
from pathlib import Path

import timm
import torch
from huggingface_hub import ModelCard

from inat_zoo.demo import run_demo

TINY = ["train.epochs=2", "data.image_size=32", "model.args.filters=8", "data.num_workers=0"]


def test_demo_pipeline_on_the_sample(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", overrides=TINY)
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "demo"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    eval_metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())

    # the trainer's test accuracy, the evaluation's and the summary's agree, on every test image
    assert summary["test_accuracy"] == metrics["test"]["accuracy"]
    assert eval_metrics["accuracy"] == metrics["test"]["accuracy"]
    assert eval_metrics["num_samples"] == metrics["test"]["num_samples"] == 200
    assert sum(map(sum, eval_metrics["confusion_matrix"])) == 200
    for name in ("filters.png", "guided_backprop.png", "gradcam.png"):
        assert (run_dir / "explain" / name).stat().st_size > 10_000

    # the Hub folder's card carries the test accuracy, and the folder loads back as the trained model
    hub = run_dir / "hub"
    card = ModelCard.load(hub / "README.md")
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == metrics["test"]["accuracy"]
    trained = timm.create_model(f"local-dir:{run_dir / 'model'}", pretrained=True).eval()
    loaded = timm.create_model(f"local-dir:{hub}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(trained(x), loaded(x))
    assert "test accuracy" in capsys.readouterr().out
