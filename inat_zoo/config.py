"""Training recipes: the schema, YAML loading, dotted ``key=value`` overrides and validation.

The recipe's keys, types, ranges and defaults are declared once, in :mod:`inat_zoo.recipe_schema`. Every mistake
(a typo in a key, a wrong type, an unknown model, a malformed override) raises :class:`UsageError` naming the key
and, for a typo, the allowed keys and the closest match, before anything is written anywhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .recipe_schema import Recipe, parse_recipe, recipe_defaults
from .rundir import read_yaml_mapping  # noqa: F401  (re-exported: sweep and report read YAML files with it)

# Every section and key with its default, in schema order (the schema itself: ``inat_zoo.recipe_schema``).
DEFAULTS: dict[str, Any] = recipe_defaults()


def default_data_root() -> str:
    """``<default cache>/inaturalist_12K``, the folder ``inat-zoo data download`` fills."""
    from .data.download import default_data_dir

    return os.fspath(default_data_dir())


def typed_recipe(recipe: Mapping[str, Any] | Recipe) -> Recipe:
    """The recipe as typed values (:class:`inat_zoo.recipe_schema.Recipe`), every default filled in, ``data.root``
    (the default data cache) and ``output_dir`` (``runs/recipe``) included; a :class:`Recipe` is returned as is.

    This is where a recipe is parsed: the trainer, its factories and the pre-flight checks read the typed values.
    Only the recipe itself is checked here (keys, types, model name); whether the data folder exists and whether
    the run directory may be written are checked by the trainer, before it writes anything. Raises
    :class:`UsageError` for any mistake.
    """
    if isinstance(recipe, Recipe):
        return recipe
    typed = parse_recipe(recipe)
    if typed.data.root is None:
        typed.data = typed.data.model_copy(update={"root": default_data_root()})
    if typed.output_dir is None:
        typed.output_dir = os.path.join("runs", "recipe")
    return typed


def validate_recipe(recipe: Mapping[str, Any] | Recipe) -> dict:
    """:func:`typed_recipe` as the plain dict a recipe file holds (every default filled in, sections in schema
    order); raises :class:`UsageError` for any mistake."""
    return typed_recipe(recipe).model_dump()


# -------------------------------------------------------------------------------------------- files, overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); the value is read as YAML (lists, null, true...)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UsageError(f"override {text!r}: the value is not valid YAML ({e.problem})") from None
    return key.split("."), value


def set_dotted_key(recipe: dict, key: str, value: Any, context: str) -> None:
    """``recipe["a"]["b"] = value`` for ``key="a.b"``, creating sections; ``context`` starts the error message."""
    parts = key.split(".")
    node = recipe
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UsageError(f"{context}: {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def keys_overlap(a: str, b: str) -> bool:
    """Whether two dotted keys name the same value or one is a section holding the other (``model.args`` and
    ``model.args.dense_size``): setting one then changes what the other holds."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def apply_overrides(recipe: dict, overrides: Sequence[str]) -> dict:
    """Set dotted keys in a copy of ``recipe``; unknown keys are caught by :func:`validate_recipe` afterwards.

    Raises :class:`UsageError` for an override that replaces a whole section after an earlier override set a key
    inside it (``model.args.dense_size=24 model.args={filters: 8}``): the earlier value would silently vanish.
    """
    recipe = copy.deepcopy(recipe)
    done: list[tuple[str, str]] = []
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        for earlier_key, earlier_text in done:
            if earlier_key.startswith(key + "."):
                raise UsageError(
                    f"override {text!r} replaces the section {key!r} after {earlier_text!r} set a key inside it, "
                    "which would be lost; give the section first or put the key into its value"
                )
        set_dotted_key(recipe, key, value, f"override {text!r}")
        done.append((key, text))
    return recipe


def read_recipe_file(path: str | os.PathLike) -> dict:
    """The recipe YAML at ``path`` as a dict, unvalidated ({} if empty); :class:`UsageError` if not a mapping."""
    return read_yaml_mapping(path, "recipe file", "a mapping of sections")


def load_typed_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML, apply ``key=value`` overrides, validate and fill defaults (:func:`typed_recipe`).

    ``output_dir`` defaults to ``runs/<recipe file stem>``. Raises :class:`UsageError` starting with the file name.
    """
    recipe = apply_overrides(read_recipe_file(path), overrides)
    if recipe.get("output_dir") is None:
        recipe["output_dir"] = os.path.join("runs", Path(path).stem)
    try:
        return typed_recipe(recipe)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """:func:`load_typed_recipe` as a plain dict (what a recipe file holds, every default filled in)."""
    return load_typed_recipe(path, overrides).model_dump()


def dump_recipe(recipe: Mapping[str, Any] | Recipe) -> str:
    """The resolved recipe as YAML, sections in schema order, so it can be re-run as is."""
    resolved = recipe.model_dump() if isinstance(recipe, Recipe) else dict(recipe)
    return yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None)
