"""pydantic's validation errors, read as the one-line messages users of inat_zoo know.

``recipe key 'train.lr' must be > 0.0, got -1.0``; ``unknown recipe key 'train.lrr' (did you mean 'lr'?); allowed
keys in section 'train': ...``. The schema (``inat_zoo.recipe_schema``) raises :func:`recipe_value_error` where
pydantic has no error of its own wording (a path, a timm model name) and calls :func:`translate` on a failure.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from .errors import UsageError

# A custom error whose context holds the words that follow the key name ("recipe key 'x' <after_key>").
RECIPE_VALUE = "recipe_value"


def type_name(value: Any) -> str:
    """How a YAML value's type reads in a message: ``null``, ``int``, ``str``..."""
    return "null" if value is None else type(value).__name__


def recipe_value_error(text: str) -> PydanticCustomError:
    """Raised inside a schema validator: :func:`translate` words it as ``recipe key '<dotted key>'<text>``."""
    return PydanticCustomError(RECIPE_VALUE, "{after_key}", {"after_key": text})


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def unknown_key(key: str, allowed: Sequence[str]) -> UsageError:
    """``unknown recipe key 'train.lrr' (did you mean 'lr'?); allowed keys in section 'train': ...``."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    where = f"in section {parent!r}" if parent else "at the top level"
    return UsageError(f"unknown recipe key {key!r}{hint}; allowed keys {where}: {', '.join(allowed)}")


def _dotted(loc: Sequence[str | int]) -> str:
    """("model", "unfreeze", 0, "epoch") -> "model.unfreeze[0].epoch"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key


def _section_model(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel]:
    """The model class under ``root`` that holds the field at ``loc`` (for its allowed keys and its choices)."""
    model = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        inner = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        model = next(a for a in inner if issubclass(a, BaseModel))
    return model


def _choices(model: type[BaseModel], field: str) -> list[Any]:
    annotation = model.model_fields[field].annotation
    choices: list[Any] = []
    for arg in getattr(annotation, "__args__", ()):
        choices.extend(getattr(arg, "__args__", (arg,)) if getattr(arg, "__origin__", None) is Literal else (arg,))
    return [None if c is type(None) else c for c in choices]


def _message(error: Mapping[str, Any], root: type[BaseModel], loc: tuple) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    key = _dotted(loc)
    if kind == RECIPE_VALUE:
        return f"recipe key {key!r}{ctx['after_key']}"
    if kind == "recipe_section":
        return f"recipe section {key!r} must be a mapping, got {ctx['got']}"
    if kind in ("extra_forbidden", "recipe_unknown_key"):
        full = loc + (ctx["key"],) if kind == "recipe_unknown_key" else loc
        return str(unknown_key(_dotted(full), list(_section_model(root, full).model_fields)))
    if kind == "literal_error":
        shown = ", ".join(
            "null" if c is None else str(c).lower() for c in _choices(_section_model(root, loc), loc[-1])
        )
        return f"recipe key {key!r} must be one of: {shown}; got {value!r}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        shown = float(value) if isinstance(bound, float) else value
        return f"recipe key {key!r} must be {_BOUNDS[kind]} {bound}, got {shown}"
    words = _TYPE_WORDS.get(kind)
    if words is not None:
        return f"recipe key {key!r} must be {words}, got {value!r} ({type_name(value)})"
    return f"recipe key {key!r}: {error['msg']}"  # a pydantic check this schema does not use yet


def translate(error: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> UsageError:
    """pydantic's errors -> the one :class:`UsageError` the user sees: an unknown key first (as when keys were
    checked before values), else the first wrong value in schema order.

    ``root`` is the whole recipe's model; ``prefix`` the location of the model that failed within it (("data",
    "augment") when only the augment mapping was validated).
    """
    errors = error.errors(include_url=False)
    unknown = [e for e in errors if e["type"] in ("extra_forbidden", "recipe_unknown_key")]
    first = min(unknown, key=lambda e: len(e["loc"])) if unknown else errors[0]
    return UsageError(_message(first, root, prefix + tuple(first["loc"])))
