"""`inat-zoo push --space`: the Space folder (app.py loading the model by its hf-hub: id, requirements, README front
matter, the carried model file), and that app.py really rebuilds an inat_* model offline without inat_zoo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image, ImageOps

import inat_zoo
from inat_zoo import space
from inat_zoo.cli import main
from inat_zoo.errors import UsageError

from .test_hub import _make_run, _offline_hub_cache, _png
from .train_helpers import subprocess_env

MODEL_ID, SPACE_ID = "someone/x", "someone/x-demo"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run, model folder, Space folder) of `push RUN --repo-id someone/x --space someone/x-demo --dry-run DIR`."""
    base = tmp_path_factory.mktemp("space")
    run, _ = _make_run(base / "run")
    argv = ["push", str(run), "--repo-id", MODEL_ID, "--space", SPACE_ID, "--dry-run", str(base / "dry")]
    assert main(argv) == 0
    return run, base / "dry", base / "dry-space"


def test_dry_run_writes_the_space_next_to_the_model(dry_run, capsys):
    run, folder, space_dir = dry_run
    files = sorted(p.name for p in space_dir.iterdir())
    assert files == ["README.md", "app.py", "flexible_cnn.py", "requirements.txt"]
    app = (space_dir / "app.py").read_text()
    assert f"MODEL_ID = 'hf-hub:{MODEL_ID}'" in app and "ARCHITECTURE_MODULES = ['flexible_cnn']" in app
    compile(app, "app.py", "exec")
    front = yaml.safe_load((space_dir / "README.md").read_text().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == [MODEL_ID]
    assert front["sdk_version"] == space.gradio_version() and front["license"] == "apache-2.0" and front["title"]
    requirements = (space_dir / "requirements.txt").read_text().split()
    assert "torch" in requirements and any(r.startswith("timm") for r in requirements)
    assert "inat_zoo" not in " ".join(requirements) and "inat-zoo" not in " ".join(requirements)
    carried = Path(inat_zoo.__file__).parent / "models" / "flexible_cnn.py"
    assert (space_dir / "flexible_cnn.py").read_bytes() == carried.read_bytes()
    card = ModelCard.load(folder / "README.md").text
    assert f"https://huggingface.co/spaces/{SPACE_ID}" in card  # the model card links its Space


def test_the_space_app_rebuilds_the_inat_model_offline_without_inat_zoo(dry_run, tmp_path):
    """app.py as the Space runs it: its own folder, no inat_zoo on the path, the model read by its hf-hub: id from
    an offline Hub cache holding the dry run's files. Its top-5 equal timm's own pipeline on the same photo."""
    _, folder, space_dir = dry_run
    _offline_hub_cache(tmp_path / "cache", MODEL_ID, folder)
    photo = _png(tmp_path / "photo.png", 5)
    script = (
        "import json, runpy, sys; ns = runpy.run_path('app.py', run_name='space_app'); "
        "import timm.models; "
        f"print(json.dumps({{'top': ns['classify']({str(photo)!r}), 'inat_zoo': 'inat_zoo' in sys.modules, "
        "'module': timm.models.model_entrypoint('inat_flexible_cnn').__module__}))"
    )
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=space_dir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["inat_zoo"] is False and result["module"] == "flexible_cnn"  # the carried file registered it

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    with torch.no_grad():
        probs = model(transform(ImageOps.exif_transpose(Image.open(photo)).convert("RGB"))[None]).softmax(-1)[0]
    values, indices = probs.topk(5)
    labels = model.pretrained_cfg["label_names"]
    assert list(result["top"]) == [labels[i] for i in indices]
    assert list(result["top"].values()) == pytest.approx(values.tolist(), abs=1e-6)


def test_a_bad_space_id_is_one_line_and_nothing_is_written(tmp_path, capsys):
    run, _ = _make_run(tmp_path / "run")
    for bad in ("no-owner", "someone/x--demo"):
        argv = ["push", str(run), "--repo-id", MODEL_ID, "--space", bad, "--dry-run", str(tmp_path / "dry")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"inat-zoo: error: --space {bad!r} is not a valid Hub id") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_existing_space_folder_is_refused_before_the_model_folder_is_written(tmp_path, capsys):
    run, _ = _make_run(tmp_path / "run")
    (tmp_path / "dry-space").mkdir()
    (tmp_path / "dry-space" / "app.py").write_text("# someone's own app\n")
    argv = ["push", str(run), "--repo-id", MODEL_ID, "--space", SPACE_ID, "--dry-run", str(tmp_path / "dry")]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err and not (tmp_path / "dry").exists()


def test_architectures_a_space_can_and_cannot_rebuild(tmp_path):
    assert space.architecture_file("resnet50") is None  # timm's own: only timm needed
    assert space.architecture_file("inat_flexible_cnn").name == "flexible_cnn.py"
    with pytest.raises(UsageError, match="does not know"):
        space.architecture_file("no_such_net")
    bad = tmp_path / "net.py"
    bad.write_text("from .helpers import thing\n")
    with pytest.raises(UsageError, match="cannot run alone in a Space"):
        space.check_self_contained(bad)
