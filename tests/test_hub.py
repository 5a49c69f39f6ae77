"""Publishing: the Hub folder, its model card, loading it back with timm, and the upload path (network stubbed)."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from timm.models import save_for_hf

import inat_zoo  # noqa: F401  (registers inat_flexible_cnn)
from inat_zoo import hub
from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.model_card import base_model_id, build_model_card, dataset_info

REPO_ID = "me/inat12k-tiny"
LABELS = [f"synth_class{i}" for i in range(10)]
IMG = 48


def _png(path: Path, seed: int) -> Path:
    """A small but real PNG (random pixels), standing in for the evaluate/explain pictures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _make_run(run: Path, labels: list[str] = LABELS) -> tuple[Path, torch.nn.Module]:
    """A run directory in the recipe-contract layout, built by hand around a tiny FlexibleCNN."""
    torch.manual_seed(0)
    model = timm.create_model("inat_flexible_cnn", num_classes=len(labels), filters=8, dense_size=16)
    model.train()
    with torch.no_grad():  # move BatchNorm statistics away from their init so loading them back is really checked
        for _ in range(3):
            model(torch.randn(4, 3, IMG, IMG) * 2 + 0.5)
    model.eval()
    data_config = {"input_size": (3, IMG, IMG), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0}
    save_for_hf(
        model, run / "model", model_config={"label_names": labels}, data_config=data_config, safe_serialization=True
    )
    recipe = {
        "seed": 42,
        "output_dir": str(run),
        "model": {
            "name": "inat_flexible_cnn",
            "args": {"filters": 8, "dense_size": 16},
            "pretrained": False,
            "freeze": "none",
            "unfreeze": [],
        },  # fmt: skip
        "data": {"root": "/tmp/sample", "image_size": IMG, "val_fraction": 0.2, "augment": {"hflip": 0.5}},
        "train": {"epochs": 3, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    params = sum(p.numel() for p in model.parameters())
    metrics = {
        "model": "inat_flexible_cnn", "freeze": "none", "params": params, "trainable_params": params,
        "best_epoch": 2, "epochs": 3,
        "validation": {"accuracy": 0.4583, "loss": 1.71, "num_samples": 24},
        "test": {"accuracy": 0.375, "loss": 1.83, "num_samples": 40},
        "world_size": 1, "train_time_s": 12.5, "images_per_s": 80.0,
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    history = [
        {"epoch": e, "train_loss": 2.3 - 0.2 * e, "train_accuracy": 0.1 + 0.1 * e, "val_loss": 2.2 - 0.15 * e,
         "val_accuracy": 0.15 + 0.1 * e, "lr": 1e-3, "epoch_time_s": 4.0}
        for e in range(3)
    ]  # fmt: skip
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    eval_metrics = {  # what `inat-zoo evaluate RUN` writes: the model reference and image paths are local
        "model": f"local-dir:{run}/model", "split": "test", "data_root": "/tmp/sample", "accuracy": 0.375,
        "macro_f1": 0.3312, "num_samples": 40, "class_names": labels,
        "skipped": {f"/tmp/sample/val/{labels[0]}/broken.jpg": "truncated"},
        "top_losses": [{"image": f"/tmp/sample/val/{labels[1]}/a.jpg", "true": labels[1], "predicted": labels[0],
                        "true_probability": 0.1, "predicted_probability": 0.7, "loss": 2.3}],
    }  # fmt: skip
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(eval_metrics))
    _png(run / "eval" / "confusion_matrix.png", 1)
    _png(run / "explain" / "gradcam.png", 2)
    return run, model


@pytest.fixture(scope="module")
def run_and_model(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def hub_folder(run_and_model, tmp_path_factory) -> Path:
    run, _ = run_and_model
    out = tmp_path_factory.mktemp("dry") / "hub"
    assert main(["push", str(run), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 0
    return out


def test_dry_run_writes_complete_folder(run_and_model, hub_folder):
    run, _ = run_and_model
    files = sorted(str(p.relative_to(hub_folder)) for p in hub_folder.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "config.json",
        "eval_metrics.json",
        "history.jsonl",
        "images/eval/confusion_matrix.png",
        "images/explain/gradcam.png",
        "images/training_curves.png",
        "metrics.json",
        "model.safetensors",
        "recipe.yaml",
    ]
    for name in ("config.json", "model.safetensors", "metrics.json"):
        src = run / "model" / name if name in ("config.json", "model.safetensors") else run / name
        assert (hub_folder / name).read_bytes() == src.read_bytes(), name
    for public in hub_folder.rglob("*"):  # every text file that goes public: no local folder in any of them
        if public.suffix in (".md", ".yaml", ".json", ".jsonl"):
            text = public.read_text()
            assert str(run) not in text and "/tmp/sample" not in text, public.name
    shared_eval = json.loads((hub_folder / "eval_metrics.json").read_text())
    assert shared_eval["model"] == "local-dir:model" and shared_eval["data_root"] == "sample"
    assert shared_eval["top_losses"][0]["image"] == f"val/{shared_eval['class_names'][1]}/a.jpg"
    assert list(shared_eval["skipped"]) == [f"val/{shared_eval['class_names'][0]}/broken.jpg"]
    assert shared_eval["accuracy"] == 0.375  # the figures themselves are unchanged
    published = (hub_folder / "recipe.yaml").read_text()
    recipe, original = yaml.safe_load(published), yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["data"]["root"] == "sample" and recipe["output_dir"] == "runs/tiny"
    assert {**recipe, "output_dir": None, "data": None} == {**original, "output_dir": None, "data": None}
    assert {**recipe["data"], "root": None} == {**original["data"], "root": None}
    assert (hub_folder / "images/explain/gradcam.png").read_bytes() == (run / "explain/gradcam.png").read_bytes()
    curves = np.asarray(Image.open(hub_folder / "images/training_curves.png").convert("L"), dtype=float)
    assert curves.shape[0] > 100 and curves.std() > 5  # a drawn figure, not a blank canvas
    assert not list(hub_folder.parent.glob(".*partial"))  # nothing half-written left next to it


def test_model_card_metadata_and_sections(run_and_model, hub_folder):
    run, _ = run_and_model
    card = ModelCard.load(hub_folder / "README.md")
    data = card.data
    assert data.library_name == "timm"
    assert data.pipeline_tag == "image-classification"
    assert {"image-classification", "timm", "inat_zoo", "inaturalist"} <= set(data.tags)
    assert "transformers" not in data.tags
    assert data.license == "apache-2.0"
    assert data.base_model is None  # trained from scratch
    metrics = json.loads((run / "metrics.json").read_text())
    by_metric = {r.metric_type: r for r in data.eval_results}
    assert by_metric["accuracy"].metric_value == metrics["test"]["accuracy"]
    assert by_metric["accuracy"].dataset_split == "test"
    assert by_metric["f1"].metric_value == 0.3312
    text = card.text
    assert f'timm.create_model("hf-hub:{REPO_ID}", pretrained=True)' in text
    assert "import inat_zoo" in text
    assert "synthetic" in text.lower() and "synth_class0" in text
    for section in ("## Model", "## Recipe", "## Results", "## Explanations", "## Usage", "## Intended use"):
        assert section in text, section
    for image in ("images/eval/confusion_matrix.png", "images/explain/gradcam.png", "images/training_curves.png"):
        assert f"]({image})" in text, image
    assert "| `train.lr` | 0.001 |" in text
    assert "**`none`**" in text
    assert "37.50%" in text and "45.83%" in text


def _offline_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay out ``folder`` as the HF cache would after a download: refs/main -> snapshots/<40-hex commit>/."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())


def test_loads_back_with_same_logits(run_and_model, hub_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    _, model = run_and_model
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        local = timm.create_model(f"local-dir:{hub_folder}", pretrained=True).eval()
        torch.testing.assert_close(local(x), expected, rtol=0, atol=0)

        # the env vars are read when huggingface_hub is imported: patch its constants in this running process
        _offline_hub_cache(tmp_path / "hub_cache", REPO_ID, hub_folder)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        remote = timm.create_model(f"hf-hub:{REPO_ID}", pretrained=True).eval()
        torch.testing.assert_close(remote(x), expected, rtol=0, atol=0)
    assert remote.pretrained_cfg["label_names"] == LABELS
    assert tuple(remote.pretrained_cfg["input_size"]) == (3, IMG, IMG)
    assert tuple(remote.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)

    # the card's usage snippet runs as written against the same (offline) Hub repo
    text = (hub_folder / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    photo = _png(tmp_path / "photo.png", 3)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet.replace('"photo.jpg"', repr(str(photo))), "card-usage", "exec"), {})
    top3 = ast.literal_eval(printed.getvalue())  # the snippet prints a list of (label, probability)
    assert len(top3) == 3 and all(label in LABELS for label, _ in top3)
    assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)


class RecordingHfApi:
    """Stand-in for huggingface_hub.HfApi at the network boundary: records calls, answers like the Hub would.

    Every call is bound to the real HfApi method's signature first, so a call the real client would reject fails here.
    """

    calls: list[tuple[str, dict]] = []
    existing_files: set[str] = set()
    existing_public: bool = False

    def __init__(self, *args, **kwargs):
        self._record("__init__", *args, **kwargs)

    def _record(self, name, *args, **kwargs) -> dict:
        bound = inspect.signature(getattr(HfApi, name)).bind(self, *args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        self.calls.append((name, arguments))
        return arguments

    def create_repo(self, *args, **kwargs):
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{self._record('create_repo', *args, **kwargs)['repo_id']}")

    def model_info(self, *args, **kwargs):
        self._record("model_info", *args, **kwargs)
        return type("Info", (), {"private": not self.existing_public})()

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", *args, **kwargs)

    def file_exists(self, *args, **kwargs):
        return self._record("file_exists", *args, **kwargs)["filename"] in self.existing_files

    def upload_folder(self, *args, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        arguments = self._record("upload_folder", *args, **kwargs)
        folder = Path(arguments["folder_path"])  # a temporary folder: read what would be uploaded now
        all_files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        arguments["files"] = sorted(filter_repo_objects(all_files, ignore_patterns=arguments.get("ignore_patterns")))
        arguments["card"] = (folder / "README.md").read_text()
        repo_id = arguments["repo_id"]
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"})()


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace HfApi (the only network boundary of push) with RecordingHfApi and provide a fake token."""
    RecordingHfApi.calls = []
    RecordingHfApi.existing_files = set()
    RecordingHfApi.existing_public = False
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests_0123456789")
    return RecordingHfApi


def _calls(name):
    return [kwargs for call, kwargs in RecordingHfApi.calls if call == name]


def test_push_uploads_one_commit(run_and_model, fake_hub, capsys):
    run, _ = run_and_model
    argv = ["push", str(run), "--repo-id", REPO_ID, "--private", "--revision", "v1", "--commit-message", "tiny run"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "hf_fake_token" not in out + err
    assert f"hf-hub:{REPO_ID}" in out
    assert _calls("__init__")[0]["token"] == "hf_fake_token_for_tests_0123456789"
    assert _calls("create_repo") == [{"repo_id": REPO_ID, "private": True, "exist_ok": True}]
    assert _calls("create_branch") == [{"repo_id": REPO_ID, "branch": "v1", "exist_ok": True}]
    (upload,) = _calls("upload_folder")
    assert upload["repo_id"] == REPO_ID
    assert upload["commit_message"] == "tiny run"
    assert upload["revision"] == "v1"
    assert {"README.md", "config.json", "model.safetensors", "recipe.yaml", "metrics.json"} <= set(upload["files"])
    assert "images/training_curves.png" in upload["files"]
    assert f"hf-hub:{REPO_ID}" in upload["card"]
    assert [c for c, _ in RecordingHfApi.calls].index("file_exists") < [c for c, _ in RecordingHfApi.calls].index(
        "upload_folder"
    )


def test_push_keeps_existing_card_unless_overwrite(run_and_model, fake_hub, caplog):
    run, _ = run_and_model
    fake_hub.existing_files = {"README.md"}
    url = hub.push(run, REPO_ID)
    assert url.startswith(f"https://huggingface.co/{REPO_ID}/commit/")
    assert "README.md" not in _calls("upload_folder")[0]["files"]
    assert "model.safetensors" in _calls("upload_folder")[0]["files"]
    assert "--overwrite-card" in caplog.text
    assert _calls("create_branch") == []  # no revision: commit to main

    RecordingHfApi.calls.clear()
    hub.push(run, REPO_ID, overwrite_card=True)
    assert "README.md" in _calls("upload_folder")[0]["files"]


def test_push_private_to_existing_public_repo_is_refused(run_and_model, fake_hub):
    run, _ = run_and_model
    fake_hub.existing_public = True
    with pytest.raises(UsageError, match="public"):
        hub.push(run, REPO_ID, private=True)
    assert _calls("upload_folder") == []


def test_push_without_token_fails_fast(run_and_model, capsys, monkeypatch):
    run, _ = run_and_model
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)

    class NoNetwork:
        def __init__(self, *a, **k):
            raise AssertionError("HfApi must not be created without a token")

    monkeypatch.setattr(hub, "HfApi", NoNetwork)
    start = time.perf_counter()
    assert main(["push", str(run), "--repo-id", REPO_ID]) == 2
    assert time.perf_counter() - start < 5
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("inat-zoo: error: ")
    assert "HF_TOKEN" in err and "hf auth login" in err
    assert "Traceback" not in err and out == ""
    # the token is checked first: even a missing run reports the token, before any other work
    assert main(["push", str(run.parent / "missing"), "--repo-id", REPO_ID]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err


def test_user_errors(tmp_path, run_and_model, hub_folder, capsys):
    run, _ = run_and_model
    (tmp_path / "untrained").mkdir()
    assert main(["push", str(tmp_path / "untrained"), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "x")]) == 2
    assert "has no model/ — train it first" in capsys.readouterr().err
    assert main(["push", str(run), "--repo-id", "no-owner", "--dry-run", str(tmp_path / "y")]) == 2
    assert "org/name" in capsys.readouterr().err
    assert main(["push", str(run), "--repo-id", REPO_ID, "--dry-run", str(hub_folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_broken_model_folder_is_refused_before_upload(tmp_path, run_and_model):
    run, _ = run_and_model
    broken = tmp_path / "broken"
    for name in ("recipe.yaml", "metrics.json"):
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_bytes((run / name).read_bytes())
    (broken / "model").mkdir()
    config = json.loads((run / "model" / "config.json").read_text())
    config["model_args"]["filters"] = 16  # weights no longer fit the architecture
    (broken / "model" / "config.json").write_text(json.dumps(config))
    (broken / "model" / "model.safetensors").write_bytes((run / "model" / "model.safetensors").read_bytes())
    with pytest.raises(UsageError, match="timm cannot load"):
        hub.build_hub_folder(broken, tmp_path / "out", REPO_ID)
    del config["label_names"]
    config["model_args"]["filters"] = 8
    (broken / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="label_names"):
        hub.build_hub_folder(broken, tmp_path / "out", REPO_ID)
    assert not (tmp_path / "out").exists()


def test_fine_tune_card_names_base_model(run_and_model):
    run, _ = run_and_model
    files = hub.read_run(run)
    files.recipe = {**files.recipe, "model": {"name": "resnet50", "pretrained": True, "freeze": "until:layer3"}}
    files.config = {**files.config, "label_names": list(inat_zoo.model_card.INAT12K_CLASSES)}
    card = build_model_card(files, "me/inat12k-resnet50")
    assert card.data.base_model == "timm/resnet50.a1_in1k"
    assert "Everything up to and including `layer3` was frozen" in card.text
    assert "synthetic" not in card.text.lower()
    assert card.data.eval_results[0].dataset_type == "inaturalist_12K"
    assert base_model_id({"model": {"name": "resnet50", "pretrained": False}}) is None
    assert base_model_id({"model": {"name": "resnet18.tv_in1k", "pretrained": True}}) == "timm/resnet18.tv_in1k"
    assert base_model_id({"model": {"name": "inat_flexible_cnn", "pretrained": True}}) is None
    assert dataset_info(LABELS, {})["synthetic"] is True


def test_card_is_valid_yaml_front_matter(hub_folder):
    text = (hub_folder / "README.md").read_text()
    front = yaml.safe_load(io.StringIO(text.split("---")[1]))
    assert front["library_name"] == "timm"
    assert front["model-index"][0]["name"] == REPO_ID.split("/")[1]


def test_shareable_recipe_keeps_hub_ids_and_still_loads(tmp_path):
    from inat_zoo.config import load_recipe

    recipe = load_recipe(
        Path(inat_zoo.__file__).parents[1] / "recipes" / "demo.yaml",
        [f"data.root={tmp_path / 'photos' / 'inaturalist_12K'}", f"output_dir={tmp_path / 'runs' / 'mine'}"],
    )
    shared = hub.shareable_recipe(recipe)
    assert shared["data"]["root"] == "inaturalist_12K" and shared["output_dir"] == "runs/mine"
    assert recipe["data"]["root"] == str(tmp_path / "photos" / "inaturalist_12K")  # the input is left alone
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(shared))
    assert load_recipe(path)["train"] == recipe["train"]  # what goes public is a valid recipe
    from_hub = hub.shareable_recipe({**recipe, "data": {**recipe["data"], "root": "someone/inat12k"}})
    assert from_hub["data"]["root"] == "someone/inat12k"  # a Hub dataset id is kept as is


@pytest.mark.parametrize(
    ("teacher", "published"),
    [
        ("/home/me/runs/resnet50_teacher", "resnet50_teacher"),
        ("local-dir:/home/me/teacher", "local-dir:teacher"),
        ("hf-hub:someone/resnet50-inat12k", "hf-hub:someone/resnet50-inat12k"),
    ],
)
def test_shareable_recipe_cuts_every_local_path(teacher, published):
    """Weights files and teachers are paths too: none of the author's folders reaches a public repo."""
    recipe = {
        "model": {"pretrained": "/home/me/weights/resnet50.safetensors"},
        "train": {"distill": {"teacher": teacher, "alpha": 0.5, "temperature": 4.0}},
    }
    shared = hub.shareable_recipe(recipe)
    assert shared["model"]["pretrained"] == "resnet50.safetensors"
    assert shared["train"]["distill"]["teacher"] == published
    assert "/home/me" not in yaml.safe_dump(shared)
    assert hub.shareable_recipe({"model": {"pretrained": True}})["model"]["pretrained"] is True


def test_a_run_recipe_that_is_not_a_mapping_is_a_usage_error(tmp_path):
    run, _ = _make_run(tmp_path / "run")
    (run / "recipe.yaml").write_text("- not\n- a recipe\n")
    with pytest.raises(UsageError, match="run recipe .* must hold a recipe mapping, got list"):
        hub.read_run(run)
    (run / "recipe.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="run recipe .* is not valid YAML"):
        hub.read_run(run)


@pytest.mark.parametrize(
    "repo_id, reason",
    [
        ("me/inat--x", "Cannot have -- or .."),  # the regex of old accepted it; the Hub client raised a traceback
        ("me/inat..x", "Cannot have -- or .."),
        ("me/-inat", "alphanumeric"),
        ("me/" + "x" * 97, "maximum length is 96"),
        ("no-owner", "org/name"),
        ("org/team/name", "org/name"),
        ("hf-hub:me/inat@v1", "revision"),
    ],
)
def test_bad_repo_id_one_line_nothing_written(tmp_path, run_and_model, fake_hub, capsys, repo_id, reason):
    run, _ = run_and_model
    out = tmp_path / "dry"
    for argv in (["--dry-run", str(out)], []):  # a dry run writes no card; a push calls nothing on the Hub
        assert main(["push", str(run), "--repo-id", repo_id, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"inat-zoo: error: --repo-id {repo_id!r} is not a valid Hub id")
        assert reason in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert [call for call, _ in RecordingHfApi.calls] == []


def test_hf_hub_prefixed_repo_id_is_published_bare(tmp_path, run_and_model, fake_hub):
    run, _ = run_and_model
    out = hub.build_hub_folder(run, tmp_path / "dry", f"hf-hub:{REPO_ID}")
    card = ModelCard.load(out / "README.md")
    assert f'timm.create_model("hf-hub:{REPO_ID}"' in card.text and "hf-hub:hf-hub:" not in card.text
    hub.push(run, f"hf-hub:{REPO_ID}")
    assert _calls("create_repo")[0]["repo_id"] == REPO_ID


@pytest.mark.parametrize("root", ["hf-hub:someone/inat12k", "someone/inat12k"])
def test_card_datasets_field_holds_the_bare_hub_id(tmp_path, root):
    """A run trained on a Hub dataset (either spelling of data.root): the card links ``someone/inat12k``."""
    run, _ = _make_run(tmp_path / "run", labels=["owl", "fox", "elk"])  # not the synthetic sample's classes
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["root"] = root
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = hub.build_hub_folder(run, tmp_path / "dry", REPO_ID)
    assert ModelCard.load(out / "README.md").data.datasets == ["someone/inat12k"]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["data"]["root"] == "someone/inat12k"


def test_push_with_onnx_and_space_uploads_both_repos(run_and_model, fake_hub, capsys):
    """One push: the model repo (with model.onnx, the card saying so) and then its Gradio Space, through the same
    recording stand-in for HfApi (the network boundary) and the same token."""
    pytest.importorskip("onnxruntime", reason="--with-onnx needs the onnx extra: pip install 'inat-zoo[onnx]'")
    run, _ = run_and_model
    argv = ["push", str(run), "--repo-id", REPO_ID, "--with-onnx", "--space", f"{REPO_ID}-demo"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "hf_fake_token" not in out + err and f"https://huggingface.co/spaces/{REPO_ID}-demo" in out
    assert _calls("create_repo") == [
        {"repo_id": REPO_ID, "private": False, "exist_ok": True},
        {"repo_id": f"{REPO_ID}-demo", "repo_type": "space", "space_sdk": "gradio", "private": False,
         "exist_ok": True},
    ]  # fmt: skip
    model_upload, space_upload = _calls("upload_folder")
    assert "model.onnx" in model_upload["files"] and "model.onnx" in model_upload["card"]
    assert f"spaces/{REPO_ID}-demo" in model_upload["card"]
    assert space_upload["repo_id"] == f"{REPO_ID}-demo" and space_upload["repo_type"] == "space"
    assert space_upload["files"] == ["README.md", "app.py", "flexible_cnn.py", "requirements.txt"]
    assert "sdk: gradio" in space_upload["card"] and f"- {REPO_ID}" in space_upload["card"]


def test_push_with_a_bad_space_id_calls_nothing(run_and_model, fake_hub, capsys):
    run, _ = run_and_model
    assert main(["push", str(run), "--repo-id", REPO_ID, "--space", "demo"]) == 2
    assert capsys.readouterr().err.startswith("inat-zoo: error: --space 'demo' is not a valid Hub id")
    assert [call for call, _ in RecordingHfApi.calls] == []
