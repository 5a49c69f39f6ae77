"""Test-only views of a model's freeze state and cached features (moved out of the package: no caller there)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers.norm_act import FrozenBatchNorm2d, FrozenBatchNormAct2d  # torchvision's class when installed

from inat_zoo.feature_cache import feature_cut
from inat_zoo.freeze import model_stages, trainable_parameters


def frozen_stages(model: nn.Module) -> list[str]:
    """Names of the stages with nothing left to train (parameters frozen, BatchNorm frozen), in forward order."""
    params = dict(model.named_parameters())
    out = []
    for s in model_stages(model):
        owned = [p for n, p in params.items() if any(n.startswith(m + ".") for m in s.modules) or n in s.loose]
        if not any(p.requires_grad for p in owned):
            out.append(s.name)
    return out


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; total includes the affine weights frozen BN keeps as buffers."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, FrozenBatchNormAct2d)) and getattr(m, "affine", True):
            total += m.weight.numel() + m.bias.numel()
    return total, trainable_parameter_count(model)


@torch.no_grad()
def backbone_features(model: nn.Module, images: torch.Tensor, cut: str | None = None) -> torch.Tensor:
    """The cached representation of ``images``: the frozen part of ``model`` up to the cut (no autograd state)."""
    fmap = model.forward_features(images)
    if (cut or feature_cut(model)) == "pre_logits":
        return model.forward_head(fmap, pre_logits=True)
    return model.head.global_pool(fmap)
