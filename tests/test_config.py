"""Recipe loading, overrides and validation: every user mistake is one UsageError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inat_zoo.config import DEFAULTS, apply_overrides, dump_recipe, load_recipe, validate_recipe
from inat_zoo.errors import UsageError


def _write(tmp_path: Path, data, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_filled_and_output_dir_from_stem(tmp_path):
    recipe = load_recipe(_write(tmp_path, {"train": {"epochs": 3}}, "my_run.yaml"))
    assert recipe["train"]["epochs"] == 3
    assert recipe["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]
    assert recipe["model"]["name"] == "inat_flexible_cnn"
    assert recipe["output_dir"] == str(Path("runs") / "my_run")
    assert recipe["data"]["root"].endswith("inaturalist_12K")
    assert set(recipe) == set(DEFAULTS)


def test_overrides_are_yaml_typed(tmp_path):
    path = _write(tmp_path, {"train": {"lr": 0.1}})
    recipe = load_recipe(
        path,
        [
            "train.lr=3e-4",
            "model.args.filters=[8,16,32,64,128]",
            "train.mixed_precision=bf16",
            "data.image_size=48",
            "train.clip_grad=null",
            "model.unfreeze=[{epoch: 3, stage: layer3}]",
            "model.freeze=until:layer2",
            "model.name=resnet18",
        ],
    )
    assert recipe["train"]["lr"] == pytest.approx(3e-4)  # YAML 1.1 reads "3e-4" as a string: coerced for numbers
    assert recipe["model"]["args"]["filters"] == [8, 16, 32, 64, 128]
    assert recipe["train"]["mixed_precision"] == "bf16"
    assert recipe["data"]["image_size"] == 48
    assert recipe["model"]["unfreeze"] == [{"epoch": 3, "stage": "layer3"}]


def test_mixed_precision_no_survives_yaml_booleans(tmp_path):
    """YAML 1.1 reads a bare `no` as false; `mixed_precision: no` is accelerate's "no", in a file or an override."""
    assert load_recipe(_write(tmp_path, "train:\n  mixed_precision: no\n"))["train"]["mixed_precision"] == "no"
    assert load_recipe(_write(tmp_path, {}), ["train.mixed_precision=no"])["train"]["mixed_precision"] == "no"
    with pytest.raises(UsageError, match="'train.mixed_precision' must be one of"):
        load_recipe(_write(tmp_path, {}), ["train.mixed_precision=yes"])  # true is not a precision


def test_typo_names_key_suggests_and_lists_allowed(tmp_path):
    with pytest.raises(UsageError) as e:
        load_recipe(_write(tmp_path, {"train": {"lrr": 0.1}}))
    msg = str(e.value)
    assert "'train.lrr'" in msg and "did you mean 'lr'" in msg
    assert "batch_size" in msg and "label_smoothing" in msg  # the allowed keys of that section
    assert str(tmp_path / "exp.yaml") in msg
    with pytest.raises(UsageError, match="unknown recipe key 'trian'.*did you mean 'train'"):
        validate_recipe({"trian": {}})
    with pytest.raises(UsageError, match="'data.augment.hfilp'"):
        validate_recipe({"data": {"augment": {"hfilp": 0.5}}})


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=two", "'train.epochs' must be an integer"),
        ("train.epochs=0", "'train.epochs' must be >= 1"),
        ("train.lr=fast", "'train.lr' must be a number"),
        ("train.channels_last=1", "'train.channels_last' must be true or false"),
        ("train.scheduler=linear", "'train.scheduler' must be one of: cosine, step, none"),
        ("train.mixed_precision=fp8", "'train.mixed_precision' must be one of"),
        ("model.freeze=partial", "'model.freeze' must be none, head or until:<stage>"),
        ("model.args=3", "'model.args' must be a mapping"),
        ("model.unfreeze=[{epoch: 2}]", "'model.unfreeze[0]'"),
        ("model.name=resnet_18", "unknown timm model 'resnet_18' (did you mean resnet18"),
        ("train.optimizer=adamv", "unknown timm optimizer 'adamv'"),
        ("track.mode=cloud", "'track.mode' must be one of: online, offline, disabled"),
        ("train.ema=2", "'train.ema' must be"),
        ("train=3", "recipe section 'train' must be a mapping"),
    ],
)
def test_wrong_values_name_the_key(tmp_path, override, fragment):
    with pytest.raises(UsageError) as e:
        load_recipe(_write(tmp_path, {}), [override])
    assert fragment in str(e.value)


def test_cross_checks():
    with pytest.raises(UsageError, match="layer_decay.*needs a scheduler"):
        validate_recipe({"train": {"layer_decay": 0.7, "scheduler": "none"}})
    with pytest.raises(UsageError, match="unfreeze.*needs a frozen model"):
        validate_recipe({"model": {"unfreeze": [{"epoch": 2, "stage": "layer3"}]}})


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "train: [1,\n"))
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_recipe(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(UsageError, match="must look like section.key=value"):
        load_recipe(_write(tmp_path, {}), ["train.lr"])
    with pytest.raises(UsageError, match="'train.lr' is not a section"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=1"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(_write(tmp_path, {"model": {"args": {"filters": 8}}}), ["train.lr=0.01"])
    again = validate_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe
    assert validate_recipe(recipe) == recipe  # idempotent: the trainer validates again


def test_cli_error_is_one_line_and_writes_nothing(tmp_path, capsys):
    from inat_zoo.cli import main

    out = tmp_path / "run"
    path = _write(tmp_path, {"output_dir": str(out), "train": {"epoch": 1}})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("inat-zoo: error:") and "'train.epoch'" in err[0]
    assert not out.exists()


def test_an_override_never_silently_drops_an_earlier_one(tmp_path):
    recipe = {"model": {"args": {"filters": 8}}}
    merged = apply_overrides(recipe, ["model.args={filters: 4}", "model.args.dense_size=24"])
    assert merged["model"]["args"] == {"filters": 4, "dense_size": 24}
    with pytest.raises(UsageError, match="replaces the section 'model.args' after 'model.args.dense_size=24' set a"):
        apply_overrides(recipe, ["model.args.dense_size=24", "model.args={filters: 4}"])


def test_an_unfreeze_after_the_last_epoch_is_refused():
    model = {"freeze": "until:stages.2", "unfreeze": [{"epoch": 3, "stage": "stages.2"}]}
    assert validate_recipe({"model": model, "train": {"epochs": 3}})["model"]["unfreeze"] == model["unfreeze"]
    with pytest.raises(UsageError, match="at epoch 3, after the last epoch \\(train.epochs=2\\): it would never"):
        validate_recipe({"model": model, "train": {"epochs": 2}})


def test_the_schema_is_one_set_of_pydantic_models():
    """DEFAULTS and the augment defaults are read off the schema; there is no second list of keys to forget."""
    from inat_zoo.data.transforms import AUGMENT_DEFAULTS
    from inat_zoo.recipe_schema import Augment, Recipe, TrainSection

    assert list(DEFAULTS) == list(Recipe.model_fields)
    assert list(DEFAULTS["train"]) == list(TrainSection.model_fields)
    assert list(AUGMENT_DEFAULTS) == list(Augment.model_fields)
    assert Recipe.model_config["extra"] == "forbid"


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"train": {"lr": float("nan")}}, "recipe key 'train.lr' must be a number, got nan (float)"),
        ({"train": {"clip_grad": "inf"}}, "recipe key 'train.clip_grad' must be a number, got inf (float)"),
        ({"train": {"lr": 0}}, "recipe key 'train.lr' must be > 0.0, got 0.0"),
        ({"data": {"val_fraction": 0.95}}, "recipe key 'data.val_fraction' must be <= 0.9, got 0.95"),
        ({"train": {"batch_size": True}}, "recipe key 'train.batch_size' must be an integer, got True (bool)"),
        ({"train": {"ema": 2}}, "recipe key 'train.ema' must be <= 1.0, got 2.0"),
        ({"train": {1: 2}}, "unknown recipe key 'train.1'; allowed keys in section 'train': epochs, batch_size"),
        (
            {"model": {"unfreeze": [{"epoch": 0, "stage": "a"}]}},
            "recipe key 'model.unfreeze[0].epoch' must be >= 1, got 0",
        ),
        ({"track": {"project": 3}}, "recipe key 'track.project' must be a string, got 3 (int)"),
        ({"output_dir": 3}, "recipe key 'output_dir' must be a path, got 3 (int)"),
        (None, "recipe section '' must be a mapping, got None"),
    ],
)
def test_pydantic_errors_read_as_one_line(recipe, message):
    with pytest.raises(UsageError) as e:
        validate_recipe(recipe)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_augment_is_checked_by_the_schema_and_kept_as_given():
    augment = {"scale": [0.5, 1], "hflip": 1}
    assert validate_recipe({"data": {"augment": augment}})["data"]["augment"] == augment  # only what the user set
    with pytest.raises(UsageError, match=r"^data.augment.scale must be \[min, max\]"):
        validate_recipe({"data": {"augment": {"scale": [0.5]}}})


def test_freeze_grammar_is_parsed_once_into_typed_values():
    from inat_zoo.recipe_schema import FreezeStrategy, Recipe

    model = {"freeze": "until:layer3", "unfreeze": [{"epoch": 3, "stage": "layer3"}, {"epoch": 2, "stage": "layer2"}]}
    typed = Recipe.model_validate({"model": model}).model
    assert typed.freeze == FreezeStrategy("until", "layer3") and str(typed.freeze) == "until:layer3"
    assert [(step.epoch, step.stage) for step in typed.unfreeze] == [(2, "layer2"), (3, "layer3")]
    assert FreezeStrategy.parse("head") == FreezeStrategy("head")
    with pytest.raises(ValueError):
        FreezeStrategy.parse("until:")
    assert validate_recipe({"model": model})["model"]["freeze"] == "until:layer3"  # dumped as the recipe's text


def test_a_resolved_recipe_reads_back_as_typed_values(tmp_path):
    from inat_zoo.recipe_schema import parse_recipe

    recipe = load_recipe(_write(tmp_path, {"train": {"lr": "1e-3"}}))
    typed = parse_recipe(recipe)
    assert typed.train.lr == pytest.approx(1e-3) and typed.data.root == recipe["data"]["root"]
    assert typed.model_dump() == recipe
    with pytest.raises(UsageError, match="unknown recipe key 'train.lrr'"):
        parse_recipe({"train": {"lrr": 1}})
