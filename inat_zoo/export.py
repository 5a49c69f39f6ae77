"""Write a trained model as a timm ``save_for_hf`` folder (config.json + model.safetensors), atomically.

The folder is what ``timm.create_model("local-dir:<folder>", pretrained=True)`` and the Hub expect: architecture,
num_classes, label names, model_args and a pretrained_cfg carrying the data config the model was trained with, so
evaluation and inference preprocess exactly as training did.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models import save_for_hf

from .atomic import atomic_directory

# data-config keys that describe preprocessing; they go into pretrained_cfg
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def save_model_folder(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    label_names: Sequence[str],
    data_config: Mapping[str, Any],
    model_args: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` (already unwrapped from accelerate / torch.compile) to ``directory``, replacing it atomically.

    ``extra_config`` lands as additional top-level keys of config.json (timm ignores unknown keys); the trainer
    records the epoch and validation accuracy there so a resumed run can tell which epoch a folder holds.
    """
    if list(label_names) and len(label_names) != getattr(model, "num_classes", len(label_names)):
        raise ValueError(f"{len(label_names)} label names for a model with {model.num_classes} classes")
    config: dict[str, Any] = {"label_names": list(label_names)}
    config.update(extra_config or {})
    data_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    if any(not t.is_contiguous() for t in model.state_dict().values()):
        # channels_last weights: safetensors stores only contiguous tensors; convert a copy, leave training alone
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    directory = Path(directory)
    with atomic_directory(directory, overwrite=True) as tmp:
        save_for_hf(
            model,
            str(tmp),
            model_config=config,
            model_args=dict(model_args) if model_args else None,
            safe_serialization=True,
            data_config=data_cfg,
        )
    return directory
