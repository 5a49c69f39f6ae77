"""One rule decides what is a Hub id (inat_zoo.hub_ids), and every command that takes one follows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.hub_ids import hub_dataset_id, parse_hub_id, resolve_data_root

from .data_helpers import copy_subset
from .eval_helpers import make_run
from .train_helpers import tiny_recipe, write_recipe


@pytest.mark.parametrize(
    "text, bare",
    [("me/inat12k", "me/inat12k"), ("hf-hub:me/inat12k", "me/inat12k"), ("Org_1/name.v2-x", "Org_1/name.v2-x")],
)
def test_valid_hub_ids_come_back_bare(text, bare):
    assert parse_hub_id(text, "--repo-id") == bare


@pytest.mark.parametrize(
    "text, reason",
    [
        ("me/inat--x", "Cannot have -- or .."),
        ("me/x.git", "cannot end by '.git'"),
        ("inat12k", "org/name"),  # a namespace is required
        ("hf-hub:inat12k", "org/name"),
        ("a/b/c", "org/name"),
        ("me/x@main", "revision"),
        ("", "org/name"),
    ],
)
def test_invalid_hub_ids_are_one_usage_error(text, reason):
    with pytest.raises(UsageError, match=f"^--repo-id {text!r} is not a valid Hub id: .*{reason}"):
        parse_hub_id(text, "--repo-id")


def test_a_model_reference_may_name_a_revision():
    assert parse_hub_id("hf-hub:timm/resnet18.a1_in1k@main", "MODEL", allow_revision=True) == (
        "timm/resnet18.a1_in1k@main"
    )
    with pytest.raises(UsageError, match="nothing after '@'"):
        parse_hub_id("hf-hub:timm/resnet18@", "MODEL", allow_revision=True)


def test_an_existing_local_path_wins(tmp_path, monkeypatch, sample_root):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("someone/inat12k") == "someone/inat12k"
    assert hub_dataset_id("hf-hub:someone/inat12k") == "someone/inat12k"
    copy_subset(sample_root, tmp_path / "someone" / "inat12k", classes=2, train=4, val=2)
    assert resolve_data_root("someone/inat12k") == Path("someone/inat12k")  # the folder, not the Hub
    assert hub_dataset_id("someone/inat12k") is None  # so the card links no dataset and the recipe keeps no path
    assert resolve_data_root("hf-hub:someone/inat12k") == "someone/inat12k"  # explicitly the Hub
    from inat_zoo.data import load_inat12k

    assert len(load_inat12k("someone/inat12k", val_fraction=0.5)["test"]) == 4  # loaded from the local folder


@pytest.mark.parametrize(
    "root, message",
    [
        ("/nonexistent/inat", "'/nonexistent/inat' does not exist$"),  # a path: no Hub rule to explain
        ("./photos", "'./photos' does not exist$"),
        ("photos", "'photos' does not exist, and it is not a Hub dataset id either: a Hub id is org/name"),
        ("me/inat--x", "'me/inat--x' does not exist, and it is not a Hub dataset id either: Cannot have --"),
        ("hf-hub:me/inat--x", "'hf-hub:me/inat--x' is not a valid Hub id: Cannot have --"),
    ],
)
def test_data_root_that_is_neither(tmp_path, monkeypatch, root, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=f"^data.root {message}"):
        resolve_data_root(root)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


@pytest.mark.parametrize(
    "root, verdict",
    [
        ("me/inat--x", "not a Hub dataset id either: Cannot have -- or .."),  # refused by the rule itself
        ("hf-hub:me/inat--x", "is not a valid Hub id: Cannot have -- or .."),
        ("photos", "not a Hub dataset id either: a Hub id is org/name"),
        # a valid id: every command accepts it as a Hub dataset (training refused it before) and fails only when
        # loading it (the tests are offline), in one line, before writing anything
        ("someone/inat12k", "no such local folder, and loading it as a Hub dataset failed"),
        ("hf-hub:someone/inat12k", "no such local folder, and loading it as a Hub dataset failed"),
    ],
)
def test_every_command_follows_the_same_rule(tmp_path, monkeypatch, capsys, sample_root, eval_run, root, verdict):
    monkeypatch.chdir(tmp_path)  # no local folder of these names
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, out))
    commands = {
        "train": ["train", str(recipe), f"data.root={root}"],
        "evaluate": ["evaluate", str(eval_run), "--data-root", root, "--out", str(out)],
        "data prepare": ["data", "prepare", root, "--image-size", "32"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("inat-zoo: error:") and err.count("\n") == 1, (name, err)
        assert verdict in err and "Traceback" not in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # nothing written by any of them


@pytest.mark.parametrize("ref", ["hf-hub:me/inat--x", "hf-hub:inat12k", "hf-hub:me/x/y"])
def test_a_bad_hub_model_reference_is_one_line(tmp_path, capsys, ref):
    assert main(["evaluate", ref, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"inat-zoo: error: MODEL {ref!r} is not a valid Hub id") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_bad_hub_model_in_a_recipe_is_one_line(sample_root, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(sample_root, tmp_path / "out"))
    assert main(["train", str(recipe), "model.name=hf-hub:me/inat--x"]) == 2  # was an HFValidationError traceback
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error:") and err.count("\n") == 1
    assert "recipe key 'model.name' 'hf-hub:me/inat--x' is not a valid Hub id: Cannot have --" in err
    assert not (tmp_path / "out").exists()
