"""Recipe mistakes stop the start before anything is written: the model is built on the meta device and the recipe
(freeze, unfreeze schedule, input size) resolved against it. Run through `inat-zoo train` with the shipped demo
recipe (DataLoader workers on, augmentation on)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.train import check_run_directory, complete_checkpoints

from .train_helpers import python_train

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
FROZEN = ["model.freeze=until:stages.2"]


def demo_args(sample_root: Path, out: Path, *overrides: str) -> list[str]:
    """`inat-zoo train recipes/demo.yaml ...` on the tiny sample; 4 filters doubling keep an epoch short."""
    return [str(DEMO), f"data.root={sample_root}", f"output_dir={out}", "model.args.filters=4", *overrides]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (  # issue 13, item 4a: trained epoch 1, then failed with checkpoints/, model/ and history.jsonl on disk
            [*FROZEN, "model.unfreeze=[{epoch: 2, stage: stages.9}]"],
            "unknown stage 'stages.9' in model.unfreeze at epoch 2; the stages of this model are: stages.0 (or stem)",
        ),
        (  # silently never applied
            [*FROZEN, "train.epochs=3", "model.unfreeze=[{epoch: 4, stage: stages.2}]"],
            "unfreezes 'stages.2' at epoch 4, after the last epoch (train.epochs=3)",
        ),
        (
            [*FROZEN, "model.unfreeze=[{epoch: 2, stage: stages.3}]"],
            "stage 'stages.3' is not frozen by model.freeze 'until:stages.2'",
        ),
        (  # the same stage under its two names
            [*FROZEN, "model.unfreeze=[{epoch: 2, stage: stem}, {epoch: 3, stage: stages.0}]"],
            "stage 'stages.0' is already unfrozen at epoch 2",
        ),
        (["model.freeze=until:layer3"], "unknown stage 'layer3' in freeze strategy 'until:layer3'"),
        (  # issue 13, item 4b: a non-square flatten head met square crops, `mat1 and mat2 shapes` on the first batch
            ["model.name=inat_flexible_cnn_flatten", "model.args.img_size=[64, 96]", "data.image_size=null"],
            "model.args.img_size [64, 96] is not square",
        ),
        (
            ["model.name=inat_flexible_cnn_flatten", "model.args.img_size=224"],
            "model.args.img_size 224 contradicts data.image_size 64",
        ),
        (  # a pooled head takes any size, but the exported config would record two input sizes
            ["model.args.img_size=32"],
            "model.args.img_size 32 contradicts data.image_size 64",
        ),
        (
            ["model.name=inat_flexible_cnn_flatten", "data.image_size=48"],
            "needs img_size divisible by 32 (5 poolings), e.g. 224 or 256; got 48 (img_size=48 is data.image_size",
        ),
        (["model.args.in_chans=1"], "cannot take the 3x64x64 input of data.image_size=64"),
    ],
)
def test_recipe_mistakes_stop_the_start_in_one_line(sample_root, tmp_path, capsys, overrides, fragment):
    out = tmp_path / "run"
    assert main(["train", *demo_args(sample_root, out, *overrides)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err
    assert not out.exists()


def test_flatten_head_is_built_for_data_image_size(sample_root, tmp_path, capsys):
    """issue 13, item 4b: `model.name=inat_flexible_cnn_flatten data.image_size=64` without model.args.img_size."""
    out = tmp_path / "run"
    assert main(["train", *demo_args(sample_root, out, "model.name=inat_flexible_cnn_flatten", "train.epochs=1")]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_args"]["img_size"] == [64, 64] and config["model_args"]["global_pool"] == "flatten"
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert json.loads((out / "metrics.json").read_text())["test"]["num_samples"] == 40
    assert "img_size" not in yaml.safe_load((out / "recipe.yaml").read_text())["model"]["args"]  # as the user wrote it


def test_a_start_killed_before_its_first_checkpoint_never_blocks_the_rerun(sample_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = demo_args(sample_root, out, "train.epochs=1", "train.batch_size=4")  # 24 batches before the checkpoint
    first = python_train(*args)
    try:
        deadline = time.monotonic() + 120
        while not (out / "recipe.yaml").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first start ended before training"
            time.sleep(0.01)
        # while it trains, the folder is in use: a second start is refused and touches nothing
        assert main(["train", *args, "resume=true"]) == 2
        assert "is in use by another running training" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / "recipe.yaml").is_file()
    assert not complete_checkpoints(out), "the first start reached its checkpoint before the kill: make epoch 1 longer"

    # the identical command starts afresh instead of failing with "already holds a run"
    assert main(["train", *args]) == 0
    assert "holds a start that stopped before its first checkpoint: starting afresh" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_what_a_finished_epoch_wrote_is_never_started_over(tmp_path):
    """Only a folder with nothing a finished epoch writes counts as a failed start (checkpoints may be deleted)."""
    out = tmp_path / "run"
    out.mkdir()
    recipe = {"output_dir": str(out), "resume": False}
    (out / "recipe.yaml").write_text("seed: 1\n")
    (out / "history.jsonl").write_text('{"epoch": 1}\n')
    assert check_run_directory(recipe) is None  # stopped before its first checkpoint: start afresh
    (out / "model").mkdir()
    with pytest.raises(UsageError, match="already holds a run"):
        check_run_directory(recipe)
