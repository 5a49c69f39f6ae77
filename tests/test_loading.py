"""MODEL references -> timm models: run dirs, local-dir:, hf-hub:, timm names, label names, clear errors."""

from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

from inat_zoo.errors import UsageError
from inat_zoo.loading import load_model, read_run_recipe, resolve_model_ref

from .eval_helpers import class_names, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


def test_resolve_refs(run):
    model_dir = (run / "model").resolve()
    assert resolve_model_ref(str(run)) == (f"local-dir:{model_dir}", run)
    # local-dir:<run>/model still knows its run (recipe, eval/ folder); a bare folder has none
    assert resolve_model_ref(f"local-dir:{run}/model") == (f"local-dir:{model_dir}", run)
    assert resolve_model_ref(str(run / "model")) == (f"local-dir:{model_dir}", run)
    assert resolve_model_ref("hf-hub:someone/inat12k") == ("hf-hub:someone/inat12k", None)
    assert resolve_model_ref("resnet18.a1_in1k") == ("resnet18.a1_in1k", None)
    assert resolve_model_ref("inat_flexible_cnn") == ("inat_flexible_cnn", None)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no/such/run", r"no such run directory: no/such/run \(for a folder local-dir:PATH\)$"),
        ("someone/run", r"no such run directory: someone/run \(for a Hub model write hf-hub:someone/run, "),
        ("local-dir:/no/such/folder", "no such model folder"),
        ("resnet18x", "did you mean resnet18"),
        ("zz:abc", "Unknown model source 'zz'"),
        ("", "empty MODEL"),
    ],
)
def test_bad_refs_are_usage_errors(ref, message):
    with pytest.raises(UsageError, match=message):
        resolve_model_ref(ref)


def test_folder_without_model_is_refused(tmp_path):
    (tmp_path / "recipe.yaml").write_text("seed: 1\n")
    with pytest.raises(UsageError, match="not a run directory"):
        resolve_model_ref(str(tmp_path))
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model_ref(f"local-dir:{tmp_path}")


def test_load_model_gives_the_saved_model(run, sample_root):
    loaded = load_model(str(run))
    assert not loaded.model.training
    assert loaded.run_dir == run
    assert loaded.label_names == class_names(sample_root)
    assert loaded.data_config["input_size"] == (3, 64, 64) and loaded.data_config["crop_pct"] == 1.0
    reference = timm.create_model(f"local-dir:{run}/model", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(x))
    assert read_run_recipe(run)["data"]["root"] == str(sample_root)
    assert read_run_recipe(None) == {}


def test_label_names_fall_back_to_class_index(tmp_path):
    model = timm.create_model("inat_flexible_cnn", num_classes=3, filters=4, pretrained=False)
    save_for_hf(model, str(tmp_path / "bare"), safe_serialization=True)
    loaded = load_model(f"local-dir:{tmp_path / 'bare'}")
    assert loaded.label_names == ["class_0", "class_1", "class_2"]
    assert loaded.run_dir is None


def test_wrong_label_count_is_refused(tmp_path):
    model = timm.create_model("inat_flexible_cnn", num_classes=3, filters=4, pretrained=False)
    save_for_hf(model, str(tmp_path / "m"), model_config={"label_names": ["a", "b"]}, safe_serialization=True)
    with pytest.raises(UsageError, match="3 outputs but its config lists 2 label_names"):
        load_model(f"local-dir:{tmp_path / 'm'}")


def test_unloadable_models_are_usage_errors():
    with pytest.raises(UsageError) as caught:  # timm's advice (`pretrained=False`) is no option of the CLI
        load_model("inat_flexible_cnn")
    assert str(caught.value) == (
        "cannot load model inat_flexible_cnn: timm has no pretrained weights for inat_flexible_cnn (inat_* "
        "architectures have none: they are trained here); use a run directory, local-dir:PATH or hf-hub:ORG/NAME"
    )
    with pytest.raises(UsageError) as caught:  # offline (conftest) with an empty cache: the weights cannot come
        load_model("resnet18")
    assert str(caught.value).startswith(
        "cannot load model resnet18: the pretrained weights of resnet18 are not in the Hugging Face cache and "
        "cannot be downloaded (offline?)"
    )
    # HF_HUB_OFFLINE=1 (conftest): a repo that is not in the cache fails at once, without network
    with pytest.raises(UsageError, match="cannot load model hf-hub:nobody/nothing"):
        load_model("hf-hub:nobody/nothing")


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_unusable_device_is_a_usage_error(run, device):
    with pytest.raises(UsageError, match=f"cannot use device '{device}'"):
        load_model(str(run), device=device)
