"""Turn a MODEL argument into a ready-to-run timm model, shared by evaluate, explain, predict, hub and demo.

A MODEL is one of: a run directory (it has ``model/config.json``), ``local-dir:PATH`` (a timm ``save_for_hf``
folder), ``hf-hub:ORG/NAME``, or a timm model name (its pretrained weights). Everything is loaded through
``timm.create_model(..., pretrained=True)`` so a model here is exactly what a timm user gets; this module only
adds clear errors, the label names and the run directory (for its recipe and its ``eval/``/``explain/`` folders).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import parse_model_name, split_model_name_tag

from . import models  # noqa: F401  (registers the inat_* architectures before any create_model)
from .errors import UsageError
from .hub_ids import hub_id_problem, parse_hub_id
from .rundir import MODEL_DIR, RECIPE_FILE, read_recipe


@dataclass
class LoadedModel:
    """A model in eval mode with what is needed to feed it and to name its outputs."""

    model: torch.nn.Module
    data_config: dict[str, Any]
    label_names: list[str]
    run_dir: Path | None
    ref: str  # the name given to timm.create_model

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(label_names)`` (the model's output width)."""
        return len(self.label_names)


def resolve_model_ref(ref: str) -> tuple[str, Path | None]:
    """Map a MODEL argument to ``(name for timm.create_model, run directory or None)``; bad refs -> UsageError."""
    ref = str(ref).strip()
    if not ref:
        raise UsageError("empty MODEL: give a run directory, local-dir:PATH, hf-hub:ORG/NAME or a timm model name")
    path = Path(ref).expanduser()
    if path.is_dir():
        return _resolve_folder(path)
    try:
        source, model_id = parse_model_name(ref)
    except ValueError as e:
        if "looks like" in str(e):  # a path-like ref that is not there
            hub = f"for a Hub model write hf-hub:{ref}, " if hub_id_problem(ref) is None else ""  # only for org/name
            raise UsageError(f"no such run directory: {ref} ({hub}for a folder local-dir:PATH)") from e
        raise UsageError(f"bad MODEL {ref!r}: {e}") from e
    if source == "local-dir":
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise UsageError(f"no such model folder: {folder} (from {ref})")
        if not (folder / "config.json").is_file():
            raise UsageError(f"{folder} has no config.json: not a timm save_for_hf model folder (from {ref})")
        return f"local-dir:{folder.resolve()}", _run_dir_of_model_folder(folder)
    if source == "hf-hub":
        return f"hf-hub:{parse_hub_id(ref, 'MODEL', allow_revision=True)}", None
    name, _tag = split_model_name_tag(model_id)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown model {ref!r}: not a run directory, a model folder or a timm model name{hint}")
    return ref, None


def _resolve_folder(path: Path) -> tuple[str, Path | None]:
    if (path / MODEL_DIR / "config.json").is_file():
        return f"local-dir:{(path / MODEL_DIR).resolve()}", path
    if (path / "config.json").is_file():  # a Hub folder (push --dry-run) or a bare model folder
        return f"local-dir:{path.resolve()}", _run_dir_of_model_folder(path)
    raise UsageError(f"{path} is not a run directory: {path / MODEL_DIR / 'config.json'} is missing")


def _run_dir_of_model_folder(folder: Path) -> Path | None:
    """``<run>/model`` belongs to a run: evaluate/explain then read its recipe and write next to it."""
    return folder.parent if folder.name == MODEL_DIR and (folder.parent / RECIPE_FILE).is_file() else None


def load_model(ref: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load MODEL with its weights (eval mode, on ``device``); loading failures become one-line UsageErrors."""
    name, run_dir = resolve_model_ref(ref)
    try:
        model = timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        # OSError covers missing files and every network/offline error of huggingface_hub and urllib;
        # RuntimeError: timm's "no pretrained weights" and state-dict mismatches; ValueError/KeyError: bad config.
        raise UsageError(f"cannot load model {ref}: {_load_problem(name, e)}") from e
    try:
        model.eval().to(device)
    except (RuntimeError, AssertionError) as e:  # a malformed device string, or cuda in a CPU-only torch
        raise UsageError(f"cannot use device {str(device)!r}: {_one_line(e)}") from e
    return LoadedModel(
        model=model,
        data_config=timm.data.resolve_model_data_config(model),
        label_names=_label_names(model, name),
        run_dir=run_dir,
        ref=name,
    )


OTHER_MODELS = "use a run directory, local-dir:PATH or hf-hub:ORG/NAME"


def _load_problem(name: str, e: BaseException) -> str:
    """Why ``timm.create_model(name, pretrained=True)`` failed, in the CLI's terms: a bare timm name without
    pretrained weights (every ``inat_*`` architecture) or whose weights cannot be fetched gets its own wording (timm's
    own advice, ``pretrained=False``, is no option of ours); anything else is timm's message on one line."""
    source, model_id = parse_model_name(name)
    if source is not None:
        return _one_line(e)
    if not timm.is_model_pretrained(model_id):
        arch = split_model_name_tag(model_id)[0]
        never = " (inat_* architectures have none: they are trained here)" if arch.startswith("inat_") else ""
        return f"timm has no pretrained weights for {model_id}{never}; {OTHER_MODELS}"
    if isinstance(e, OSError):  # huggingface_hub / urllib: offline, or the weights are not in the cache
        return (
            f"the pretrained weights of {model_id} are not in the Hugging Face cache and cannot be downloaded "
            f"(offline?); download them once online, or {OTHER_MODELS}"
        )
    return _one_line(e)


def _label_names(model: torch.nn.Module, name: str) -> list[str]:
    """``model.pretrained_cfg["label_names"]`` (timm copies config.json's ``label_names`` there for ``local-dir:`` and
    ``hf-hub:`` models), ImageNet names for a timm name's own weights, else ``class_<i>``.

    Raises UsageError when the names do not match the model's number of outputs."""
    num_classes = int(model.num_classes)
    source, _model_id = parse_model_name(name)
    names: Any = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if not names and source is None:  # a timm name's own pretrained weights: ImageNet classes
        names = _imagenet_label_names(model)
    if not names:
        return [f"class_{i}" for i in range(num_classes)]
    if isinstance(names, dict):  # timm allows {index: name}
        names = [names[k] for k in sorted(names, key=int)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise UsageError(f"model {name} has {num_classes} outputs but its config lists {len(names)} label_names")
    return names


def _imagenet_label_names(model: torch.nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    return ImageNetInfo(subset).label_descriptions(as_dict=False) if subset else None


def read_run_recipe(run_dir: Path | None) -> dict[str, Any]:
    """The resolved recipe of a run (``recipe.yaml``), or ``{}`` when the model is not a run directory.

    Raises UsageError when the run's recipe.yaml is not YAML or not a mapping (:func:`inat_zoo.rundir.read_recipe`).
    """
    if run_dir is None or not (run_dir / RECIPE_FILE).is_file():
        return {}
    return read_recipe(run_dir)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
