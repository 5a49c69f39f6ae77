"""What names a Hugging Face Hub repository: decided here, once, for every option that accepts one.

Used by a recipe's ``data.root`` (training), ``inat-zoo evaluate --data-root``, ``inat-zoo data prepare`` (all three
through :func:`inat_zoo.data.load_inat12k`), ``inat-zoo push --repo-id``, an ``hf-hub:ID`` MODEL and the model
card's ``datasets`` field. The rule:

1. an existing local path wins (a folder called ``org/name`` in the working directory is that folder);
2. an ``hf-hub:`` prefix is stripped;
3. a namespace is required: ``org/name`` (what we load or publish always lives under a user or an organisation);
4. the id passes ``huggingface_hub.utils.validate_repo_id`` (letters, digits, ``-_.``, no ``--`` or ``..``, at most
   96 characters, ...), so a bad id is refused here, in one line, and never reaches the Hub client as a traceback.

Anything else is a :class:`~inat_zoo.errors.UsageError` naming the option. Nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

HUB_PREFIX = "hf-hub:"


def hub_id_problem(text: str) -> str | None:
    """Why ``text`` (an ``hf-hub:`` prefix allowed) is not a Hub id ``org/name``; ``None`` when it is one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = text.removeprefix(HUB_PREFIX)
    if repo_id.count("/") != 1:
        return "a Hub id is org/name (a namespace and a name, one '/')"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return str(e)
    return None


def parse_hub_id(text: str, what: str, *, allow_revision: bool = False) -> str:
    """``text`` as a bare Hub id (``hf-hub:`` stripped); a :class:`UsageError` naming ``what`` when it is not one.

    With ``allow_revision`` (a MODEL, as timm reads it) ``org/name@revision`` is accepted and returned whole.

    Example: ``parse_hub_id("hf-hub:me/inat12k", "--repo-id") == "me/inat12k"``;
    ``parse_hub_id("me/inat--x", "--repo-id")`` raises ``UsageError("--repo-id 'me/inat--x' is not a valid Hub id:
    Cannot have -- or .. in repo_id: 'me/inat--x'.")``.
    """
    text = str(text).strip()
    repo_id, at, revision = text.removeprefix(HUB_PREFIX).partition("@")
    problem = hub_id_problem(repo_id)
    if problem is None and at and not allow_revision:
        problem = "a revision (@...) is not allowed here"
    elif problem is None and at and not revision:
        problem = "nothing after '@' (write org/name@REVISION or leave the '@' out)"
    if problem is not None:
        raise UsageError(f"{what} {text!r} is not a valid Hub id: {problem}")
    return f"{repo_id}@{revision}" if at else repo_id


def resolve_data_root(root: str | os.PathLike, what: str = "data.root") -> Path | str:
    """A data location as a local :class:`~pathlib.Path` (when it exists) or a bare Hub dataset id (``str``).

    Raises :class:`UsageError` naming ``what`` when ``root`` is neither: a missing path (``/data/inat``,
    ``./photos``), an ``hf-hub:`` id that is not valid, a name without a namespace, or an ``org/name`` that
    ``validate_repo_id`` refuses. Whether the Hub really holds that dataset is only known when it is loaded.
    """
    text = str(root).strip()
    path = Path(text).expanduser()
    if text and path.exists():
        return path
    if text.startswith(HUB_PREFIX):
        return parse_hub_id(text, what)  # explicitly a Hub id: say what is wrong with it
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        raise UsageError(f"{what} {text!r} does not exist")  # a path, not an id: no Hub rule to explain
    problem = hub_id_problem(text)
    if problem is not None:
        raise UsageError(f"{what} {text!r} does not exist, and it is not a Hub dataset id either: {problem}")
    return text


def hub_dataset_id(root: str | os.PathLike | None) -> str | None:
    """The bare Hub id a recorded ``data.root`` names, or ``None`` for a local path (or nothing valid): what a
    model card may link in its ``datasets`` field and what a shared recipe may keep as it is."""
    if not root:
        return None
    try:
        resolved = resolve_data_root(root)
    except UsageError:
        return None
    return resolved if isinstance(resolved, str) else None
