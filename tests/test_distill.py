"""``train.distill``: a tiny student learns from a tiny teacher run; the loss, the teacher's input, the refusals."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import inat_zoo  # noqa: F401  (registers inat_*)
from inat_zoo.cli import main
from inat_zoo.config import typed_recipe
from inat_zoo.errors import UsageError
from inat_zoo.recipe_schema import Distill
from inat_zoo.train import train
from inat_zoo.trainer.distill import Distillation, create_distillation, distillation_loss

from .train_helpers import read_run, tiny_recipe, write_recipe

DEFAULTS = {"data": {"num_workers": 2, "augment": {"scale": [0.5, 1.0], "color_jitter": 0.3}}}


@pytest.fixture(scope="module")
def teacher_run(sample_root, tmp_path_factory):
    """A 1-epoch teacher at 40 px (the student trains at 32 px: its crops are resized for the teacher)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_recipe(sample_root, out, data={"image_size": 40}, train={"epochs": 1}))
    return out


def test_a_student_distils_from_a_teacher_run(teacher_run, sample_root, tmp_path, capsys):
    from inat_zoo.hub import read_run as read_run_files
    from inat_zoo.model_card import build_model_card
    from inat_zoo.report import collect, markdown_table

    out = tmp_path / "student"
    distill = {"teacher": str(teacher_run), "alpha": 0.7, "temperature": 2.0}
    recipe = tiny_recipe(sample_root, out, **DEFAULTS, train={"epochs": 1, "distill": distill})
    metrics = train(recipe)
    assert f"distilling from {teacher_run} (alpha 0.7, T 2)" in capsys.readouterr().out
    assert read_run(out)[0] == metrics and metrics["test"]["num_samples"] == 40
    card = str(build_model_card(read_run_files(out), "me/student"))
    # a local teacher by its folder's name only, as the published recipe shows local folders
    assert "Distilled from the teacher `run` (alpha 0.7, temperature 2.0" in card and str(teacher_run) not in card
    rows, varying = collect([str(teacher_run), str(out)])[:2]
    table = markdown_table(rows, varying)
    assert "| teacher |" in table.splitlines()[0] and f"| {teacher_run} |" in table


def test_the_loss_is_hintons(teacher_run):
    torch.manual_seed(0)
    student, teacher, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10), 3.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    expected = t * t * (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)
    distillation_loss(student, teacher, t).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_the_teacher_sees_the_students_crop_in_its_own_data_config():
    from accelerate import Accelerator

    from inat_zoo.trainer.accelerate_compat import reset_accelerator_state

    reset_accelerator_state()
    accelerator = Accelerator(cpu=True)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 10)).eval().requires_grad_(False)
    student_config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 4, 4)}
    teacher_config = {"mean": (0.1, 0.2, 0.3), "std": (1.0, 2.0, 4.0), "input_size": (3, 6, 6)}
    hook = Distillation(teacher, student_config, teacher_config, Distill(teacher="t", alpha=0.25, temperature=2.0),
                        accelerator)  # fmt: skip
    images = torch.full((2, 3, 4, 4), (0.8 - 0.5) / 0.25)  # a uniform 0.8 grey after un-normalising
    inputs = hook.teacher_inputs(images)
    assert inputs.shape == (2, 3, 6, 6)
    for c, (mean, std) in enumerate(zip(teacher_config["mean"], teacher_config["std"], strict=True)):
        torch.testing.assert_close(inputs[:, c], torch.full((2, 6, 6), (0.8 - mean) / std))
    logits, labels = torch.randn(2, 10), torch.tensor([1, 2])
    ce = F.cross_entropy(logits, labels)
    expected = 0.75 * ce + 0.25 * distillation_loss(logits, teacher(inputs), 2.0)
    torch.testing.assert_close(hook(ce, logits, images), expected)


def test_the_teacher_is_frozen_on_the_accelerators_device(teacher_run, sample_root, tmp_path):
    from accelerate import Accelerator

    from inat_zoo.trainer.accelerate_compat import reset_accelerator_state

    reset_accelerator_state()
    accelerator = Accelerator(cpu=True)
    recipe = typed_recipe(tiny_recipe(sample_root, tmp_path / "r", train={"distill": {"teacher": str(teacher_run)}}))
    hook = create_distillation(recipe, {"mean": (0.5,) * 3, "std": (0.5,) * 3, "input_size": (3, 32, 32)}, accelerator)
    assert not hook.teacher.training and hook.size == (40, 40)
    assert all(not p.requires_grad and p.device == accelerator.device for p in hook.teacher.parameters())


def test_bad_distill_settings_are_one_line_and_write_nothing(teacher_run, sample_root, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, out, train={"distill": {"teacher": "x"}}))
    assert main(["train", str(recipe), "train.distill.alpha=1.5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"inat-zoo: error: {recipe}: recipe key 'train.distill.alpha' must be <= 1.0, got 1.5\n")
    assert main(["train", str(recipe), f"train.distill.teacher={tmp_path / 'no_run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: train.distill.teacher ") and "no such run directory" in err
    assert err.count("\n") == 1
    assert main(["train", str(recipe), "train.distill={alpha: 0.5}"]) == 2
    assert "recipe key 'train.distill' needs a teacher" in capsys.readouterr().err
    three = tmp_path / "three_classes"
    timm.models.save_for_hf(timm.create_model("inat_flexible_cnn", num_classes=3, filters=8), three)
    with pytest.raises(UsageError, match="has 3 classes, the data 10"):
        train(tiny_recipe(sample_root, out, train={"distill": {"teacher": f"local-dir:{three}"}}))
    assert not out.exists()


def test_the_shipped_recipe_distils_the_flexible_cnn_from_a_resnet50_run():
    from inat_zoo.config import load_typed_recipe
    from inat_zoo.trainer.distill import check_teacher

    from .train_helpers import REPO

    recipe = load_typed_recipe(REPO / "recipes" / "flexible_cnn_distill.yaml")
    assert recipe.model.name == "inat_flexible_cnn" and recipe.model.pretrained is False
    assert recipe.train.distill == Distill(teacher="runs/resnet50_until_layer3", alpha=0.7, temperature=4.0)
    assert "TARGET, NOT YET RUN" in (REPO / "recipes" / "flexible_cnn_distill.yaml").read_text().splitlines()[0]
    with pytest.raises(UsageError, match="train.distill.teacher 'no/such/teacher_run': no such run directory"):
        check_teacher("no/such/teacher_run", 10)


def test_the_head_feature_cache_steps_aside_for_distillation(sample_root, tmp_path, capsys):
    from accelerate import Accelerator

    from inat_zoo.trainer.accelerate_compat import reset_accelerator_state
    from inat_zoo.trainer.build import create_model, freeze_model
    from inat_zoo.trainer.loaders import feature_cache_wanted

    reset_accelerator_state()
    accelerator = Accelerator(cpu=True)
    recipe = typed_recipe(
        tiny_recipe(sample_root, tmp_path / "r", model={"freeze": "head"}, train={"distill": {"teacher": "t"}})
    )
    model = freeze_model(create_model(recipe, 10), recipe)
    assert feature_cache_wanted(model, recipe, accelerator) is False
    assert "head feature cache off: train.distill feeds the teacher the training images" in capsys.readouterr().out
    recipe.train.head_feature_cache = True
    with pytest.raises(UsageError, match="head_feature_cache=true is not possible: train.distill"):
        feature_cache_wanted(model, recipe, accelerator)
