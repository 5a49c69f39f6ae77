"""``model.pretrained: PATH``: start a model from local weights, offline, keeping or replacing its classifier head.

PATH is a weights file (``.safetensors``, preferred, or ``.pth``/``.bin``/``.pt``, read only with
``torch.load(weights_only=True)`` through timm's ``load_state_dict``), a folder in timm's Hub layout (config.json +
model.safetensors, or pytorch_model.bin) or an inat_zoo run directory (its ``model/``).

The head is kept when the file's classifier has the shape of the model's (the same class count) and replaced (left
as the model initialised it) when it differs. The decision reads the file's own classifier weight, found under the
model's classifier name (``pretrained_cfg["classifier"]``, else the name of ``get_classifier()``): timm's own
``pretrained=True`` path compares the recipe's class count with the architecture's *registered* ``num_classes``
instead, which is wrong both for a 10-class run file loaded into a 10-class model (head dropped) and for an
ImageNet file loaded with the registered count (head kept). Every other tensor must fit the model exactly; a missing
file or a misfit is one :class:`UsageError`, found by the preflight on the meta-device model before anything is
written.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..rundir import MODEL_DIR

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's save_for_hf / Hub layout, safetensors first


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file ``model.pretrained`` names: the file itself, ``<folder>/model.safetensors`` (or
    ``pytorch_model.bin``) of a timm Hub-layout folder, or that file in a run directory's ``model/``.

    Raises :class:`UsageError` for a missing path, a file of another kind or a folder without weights.
    """
    where = Path(path).expanduser()
    if not where.exists():
        raise UsageError(f"model.pretrained: no such weights file or folder: {path}")
    if where.is_file():
        if where.suffix not in WEIGHT_SUFFIXES:
            raise UsageError(f"model.pretrained: {path} is not a weights file ({', '.join(WEIGHT_SUFFIXES)})")
        return where
    for folder in (where, where / MODEL_DIR):
        for name in _FOLDER_FILES:
            if (folder / name).is_file():
                return folder / name
    raise UsageError(
        f"model.pretrained: {path} holds no {' or '.join(_FOLDER_FILES)} (nor a run directory's {MODEL_DIR}/ with one)"
    )


def read_weights(path: str | os.PathLike) -> dict:
    """The state dict (name -> CPU tensor) of the weights at ``path`` (:func:`weights_file`), through timm's
    ``load_state_dict`` (safetensors, or ``torch.load(weights_only=True)``; a ``state_dict``/``model`` entry and a
    ``module.`` prefix unwrapped). Raises :class:`UsageError` when the file cannot be read."""
    from timm.models import load_state_dict

    file = weights_file(path)
    try:
        return load_state_dict(str(file), use_ema=False, weights_only=True)
    except Exception as e:  # safetensors' and torch's errors for a truncated or foreign file have no common base
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UsageError(f"model.pretrained: cannot read weights from {file}: {reason}") from None


def classifier_names(model) -> list[str]:
    """The model's classifier module names (``pretrained_cfg["classifier"]``, a name or a tuple of names), else the
    name of the module ``get_classifier()`` returns; [] for a model without one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier")
    if names:
        return [names] if isinstance(names, str) else list(names)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return [name for name, module in model.named_modules() if head is not None and module is head][:1]


def fit_weights(model, state_dict: dict, source: str) -> tuple[dict, bool]:
    """``(state dict to load, head kept)``: the file's classifier tensors dropped when their shapes differ from the
    model's (another class count), every other tensor checked against the model's name by name and shape.

    Works on a meta-device model (shapes only). Raises :class:`UsageError` naming the first misfit.
    """
    own = model.state_dict()
    heads = [f"{name}.{kind}" for name in classifier_names(model) for kind in ("weight", "bias")]
    heads = [key for key in heads if key in own]
    kept = all(key in state_dict and tuple(state_dict[key].shape) == tuple(own[key].shape) for key in heads)
    if not kept:
        state_dict = {key: value for key, value in state_dict.items() if key not in heads}
    missing = [key for key in own if key not in state_dict and (kept or key not in heads)]
    unexpected = [key for key in state_dict if key not in own]
    wrong = [key for key in state_dict if key in own and tuple(state_dict[key].shape) != tuple(own[key].shape)]
    if missing or unexpected or wrong:
        if wrong:
            key = wrong[0]
            what = f"{key} is {list(state_dict[key].shape)} there, {list(own[key].shape)} in the model"
        else:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UsageError(
            f"model.pretrained: the weights in {source} do not fit the model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape: {what}); same architecture and model.args?"
        )
    return state_dict, kept


def check_weights(model, path: str | os.PathLike) -> bool:
    """The preflight's check of ``model.pretrained: PATH`` against the (meta-device) model: whether the head would
    be kept. Raises :class:`UsageError` for a missing or unreadable file or weights that do not fit."""
    return fit_weights(model, read_weights(path), str(path))[1]


def load_weights(model, path: str | os.PathLike) -> bool:
    """Load the weights at ``path`` into ``model`` (in place; the head replaced when the class count differs);
    returns whether the file's head was kept. Raises :class:`UsageError` as :func:`check_weights`."""
    state_dict, kept = fit_weights(model, read_weights(path), str(path))
    model.load_state_dict(state_dict, strict=kept)
    return kept
