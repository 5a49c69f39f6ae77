"""``model.pretrained: PATH``: a run fine-tunes offline from another run's weights (a run directory, its timm-layout
model folder, a .safetensors or a .pth file), the head kept for the same class count and replaced for another."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from inat_zoo.cli import main
from inat_zoo.config import typed_recipe
from inat_zoo.errors import UsageError
from inat_zoo.train import train
from inat_zoo.trainer.build import create_model

from .train_helpers import read_run, tiny_recipe, write_recipe

# the shipped recipes' defaults: 2 DataLoader workers and augmentation on (random crops, flips, colour jitter)
DEFAULTS = {"data": {"num_workers": 2, "augment": {"scale": [0.5, 1.0], "color_jitter": 0.3}}}
HEAD = ("head.fc.weight", "head.fc.bias")  # FlexibleCNN's classifier (pretrained_cfg["classifier"] == "head.fc")


@pytest.fixture(scope="module")
def first_run(sample_root, tmp_path_factory):
    """A 1-epoch run on the 10-class sample: the weights the second runs start from."""
    out = tmp_path_factory.mktemp("first") / "run"
    train(tiny_recipe(sample_root, out, train={"epochs": 1}))
    return out


@pytest.fixture(scope="module")
def five_classes(sample_root, tmp_path_factory):
    """The sample with its first 5 classes only (train/ and val/)."""
    root = tmp_path_factory.mktemp("five")
    for split in ("train", "val"):
        for folder in sorted(p for p in (sample_root / split).iterdir() if p.is_dir())[:5]:
            shutil.copytree(folder, root / split / folder.name)
    return root


def _weights(run) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def test_another_class_count_replaces_the_head_and_keeps_the_backbone(first_run, five_classes, tmp_path, capsys):
    out = tmp_path / "second"
    recipe = tiny_recipe(five_classes, out, **DEFAULTS, model={"pretrained": str(first_run)}, train={"epochs": 1})
    before = create_model(typed_recipe(recipe), 5).state_dict()  # the model the run starts from, before training
    first = _weights(first_run)
    assert before.keys() == first.keys()
    for name, value in first.items():
        if name in HEAD:
            assert before[name].shape[0] == 5 and value.shape[0] == 10, name
        else:
            torch.testing.assert_close(before[name], value, rtol=0, atol=0, msg=name)
    metrics = train(recipe)  # offline (HF_HUB_OFFLINE=1): the weights come from the run directory only
    assert "classifier head replaced" in capsys.readouterr().out
    assert read_run(out)[0] == metrics and metrics["test"]["num_samples"] == 20
    assert _weights(out)["head.fc.weight"].shape[0] == 5


@pytest.mark.parametrize("source", ["model_folder", "safetensors", "pth"])
def test_the_same_class_count_keeps_the_head(first_run, sample_root, tmp_path, source):
    first = _weights(first_run)
    path = {"model_folder": first_run / "model", "safetensors": first_run / "model" / "model.safetensors"}.get(source)
    if source == "pth":
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": first}, path)  # read back with torch.load(weights_only=True) through timm
    recipe = tiny_recipe(sample_root, tmp_path / "run", model={"pretrained": str(path)})
    model = create_model(typed_recipe(recipe), 10)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, first[name], rtol=0, atol=0, msg=name)


def test_a_missing_path_is_one_line_and_writes_nothing(sample_root, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, out))
    code = main(["train", str(recipe), f"model.pretrained={tmp_path / 'no' / 'resnet50.safetensors'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("inat-zoo: error: model.pretrained: no such weights file or folder: ")
    assert not out.exists()


def test_weights_of_another_architecture_are_refused_before_anything_is_written(first_run, sample_root, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(sample_root, out, model={"args": {"filters": 16}, "pretrained": str(first_run)})
    with pytest.raises(UsageError, match=r"do not fit the model .* 26 of another shape: "):
        train(recipe)
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no model.safetensors or pytorch_model.bin"):
        train(tiny_recipe(sample_root, out, model={"pretrained": str(tmp_path / "empty")}))
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(UsageError, match="cannot read weights from"):
        train(tiny_recipe(sample_root, out, model={"pretrained": str(tmp_path / "bad.safetensors")}))
    # a pickle that would run code is refused: .pth files are read with torch.load(weights_only=True) only

    class RunsCode:
        def __reduce__(self):
            return print, ("this ran while unpickling",)

    torch.save({"state_dict": _weights(first_run), "hook": RunsCode()}, tmp_path / "pickled.pth")
    with pytest.raises(UsageError, match=r"cannot read weights from .*pickled\.pth: weights_only=True blocked"):
        train(tiny_recipe(sample_root, out, model={"pretrained": str(tmp_path / "pickled.pth")}))
    assert not out.exists()
