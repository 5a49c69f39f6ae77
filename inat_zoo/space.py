"""A Hugging Face Space (Gradio) next to a published model: ``inat-zoo push RUN --repo-id U/N --space U/N-demo``.

The Space folder holds ``app.py`` (:mod:`inat_zoo.space_app` with the model's ``hf-hub:`` id filled in),
``requirements.txt`` (what the app imports beyond gradio, which the Space's SDK provides), ``README.md`` (the Space
front matter: ``sdk: gradio``, ``sdk_version``, ``app_file``, ``models``, title, license) and, for an ``inat_*``
architecture, the model file that defines it: inat_zoo is not on PyPI, so the Space carries the one self-contained
file (``inat_zoo/models/flexible_cnn.py``: torch and timm only) and app.py imports it to register the architecture
with timm before ``timm.create_model("hf-hub:U/N", pretrained=True)``. timm's own architectures need only timm.

:func:`build_space_folder` writes it (atomically); :func:`upload_space` creates the Space repo and uploads it with an
``HfApi`` the caller made (hub.py: same token rules as the model push).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

from huggingface_hub import SpaceCard, SpaceCardData

from .atomic import atomic_directory, atomic_write_text
from .errors import UsageError
from .hub_ids import parse_hub_id

APP_FILE = "app.py"
TEMPLATE = Path(__file__).with_name("space_app.py")
# the gradio the Space runs when this one has none installed (the version the app was last checked with)
KNOWN_GRADIO_VERSION = "6.31.0"
REQUIREMENTS = ("torch", "timm>=1.0.31,<1.1", "huggingface_hub", "safetensors")
_OWN_PACKAGE = "inat_zoo"


def check_space_id(space_id: str) -> str:
    """``--space`` as a bare Hub id, by the project's one rule (:func:`inat_zoo.hub_ids.parse_hub_id`)."""
    return parse_hub_id(space_id, "--space")


def gradio_version() -> str:
    """The installed gradio's version (what the app was tried with), else :data:`KNOWN_GRADIO_VERSION`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        return KNOWN_GRADIO_VERSION


def architecture_file(architecture: str) -> Path | None:
    """The model file a Space must carry to rebuild ``architecture``: None for timm's own architectures.

    Raises UsageError when timm does not know the architecture, when it comes from a package other than timm and
    inat_zoo (a Space could not import it), or when its inat_zoo file is not self-contained (imports inat_zoo).
    """
    import timm.models

    from . import models  # noqa: F401  (registers the inat_* architectures)

    name = timm.models.get_arch_name(architecture)
    if not timm.models.is_model(name):
        raise UsageError(f"timm does not know the architecture {architecture!r}: a Space could not rebuild it")
    module = timm.models.model_entrypoint(name).__module__
    if module.split(".")[0] == "timm":
        return None
    if module.split(".")[0] != _OWN_PACKAGE:
        raise UsageError(f"architecture {name} is defined in {module}, which the Space cannot install")
    path = Path(importlib.util.find_spec(module).origin)
    check_self_contained(path)
    return path


def check_self_contained(path: Path) -> None:
    """Refuse a model file that imports inat_zoo (absolutely or relatively): copied alone into a Space, it would fail
    at import. Raises UsageError naming the file and the import."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == _OWN_PACKAGE):
            raise UsageError(f"{path} imports {'.' * node.level}{node.module or ''}: it cannot run alone in a Space")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == _OWN_PACKAGE for a in node.names):
            raise UsageError(f"{path} imports {_OWN_PACKAGE}: it cannot run alone in a Space")


def render_app(model_repo_id: str, modules: list[str], title: str, description: str) -> str:
    """The Space's app.py: the template with its four constants set (Python literals)."""
    values = {
        "MODEL_ID": f"hf-hub:{model_repo_id}",
        "ARCHITECTURE_MODULES": modules,
        "TITLE": title,
        "DESCRIPTION": description,
    }
    text = TEMPLATE.read_text(encoding="utf-8")
    for name, value in values.items():
        text, count = re.subn(rf"^{name} = .*$", lambda _m, n=name, v=value: f"{n} = {v!r}", text, flags=re.M)
        if count != 1:  # the template changed shape: a bug, not a user mistake
            raise RuntimeError(f"{TEMPLATE} has {count} lines assigning {name}")
    return text


def space_card(space_id: str, model_repo_id: str, title: str, license: str, accuracy: float | None) -> SpaceCard:
    """README.md of the Space: the front matter the Hub reads (gradio SDK and version, app file, linked model)."""
    data = SpaceCardData(
        title=title,
        sdk="gradio",
        sdk_version=gradio_version(),
        app_file=APP_FILE,
        models=[model_repo_id],
        license=license,
        emoji="🦋",
        colorFrom="green",
        colorTo="blue",
        pinned=False,
        short_description=f"Try {model_repo_id.split('/')[-1]} on your photos"[:60],
    )
    acc = f" (test accuracy {100 * accuracy:.2f}%)" if accuracy is not None else ""
    body = (
        f"# {title}\n\nA Gradio demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}){acc}: upload a "
        "photo, get the top-5 labels.\n\n"
        f'The app loads the model with `timm.create_model("hf-hub:{model_repo_id}", pretrained=True)`. Written by '
        "`inat-zoo push --space` (inat_zoo); a Space cannot pip-install inat_zoo, so it "
        "carries the model file that defines an `inat_*` architecture and imports it to register it with timm.\n"
    )
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def build_space_folder(
    out_dir: str | Path,
    space_id: str,
    model_repo_id: str,
    config: dict[str, Any],
    *,
    title: str | None = None,
    license: str = "apache-2.0",
    accuracy: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Space folder for the model ``model_repo_id`` (its ``config.json`` is ``config``) to ``out_dir``.

    Files: app.py, requirements.txt, README.md, and the architecture's model file for ``inat_*`` models. ``out_dir``
    must not exist (or be empty) unless ``overwrite``. Raises UsageError for a bad id or an architecture a Space
    cannot rebuild, before anything is written.
    """
    space_id, model_repo_id = check_space_id(space_id), parse_hub_id(model_repo_id, "--repo-id")
    model_file = architecture_file(str(config.get("architecture", "")))
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and (overwrite or not any(out_dir.iterdir()))):
        raise UsageError(f"{out_dir} already exists and is not an empty folder: choose another or remove it")
    title = title or f"{model_repo_id.split('/')[-1]} demo"
    classes = len(config.get("label_names") or []) or config.get("num_classes")
    description = f"`{config.get('architecture')}` from [{model_repo_id}](https://huggingface.co/{model_repo_id})"
    description += f", {classes} classes" if classes else ""
    modules = [model_file.stem] if model_file else []
    with atomic_directory(out_dir, overwrite=out_dir.exists()) as tmp:
        atomic_write_text(tmp / APP_FILE, render_app(model_repo_id, modules, title, description))
        atomic_write_text(tmp / "requirements.txt", "\n".join(REQUIREMENTS) + "\n")
        atomic_write_text(tmp / "README.md", str(space_card(space_id, model_repo_id, title, license, accuracy)))
        if model_file is not None:
            atomic_write_text(tmp / model_file.name, model_file.read_text(encoding="utf-8"))
    return out_dir


def upload_space(api: Any, space_id: str, folder: str | Path, *, private: bool = False, commit_message: str) -> str:
    """Create the Space (gradio SDK; kept if it exists) and upload ``folder`` to it in one commit; the commit URL.

    ``api`` is an authenticated :class:`huggingface_hub.HfApi`; its errors propagate (network, permissions).
    """
    space_id = check_space_id(space_id)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=space_id, repo_type="space", folder_path=str(folder), commit_message=commit_message
    )
    return str(commit.commit_url)
