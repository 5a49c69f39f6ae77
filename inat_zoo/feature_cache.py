"""Head-only training on cached features: run the frozen backbone once per split, then train only the head.

With ``freeze: head`` everything before the head is fixed, so its output for an image (under the evaluation
transform) never changes: computing it every epoch is wasted work. :func:`extract_features` computes it once;
:class:`HeadOnly` is the trainable rest of the model, sharing the model's own parameter objects, so the trainer
trains ``HeadOnly`` on a ``TensorDataset(features, labels)`` with the optimizer it built from the model and keeps
exporting the original model.

Where the cut is made (:func:`feature_cut`):

- ``pre_logits``: every trainable parameter is in the classifier (``get_classifier()``; resnets' ``fc``). The
  cached feature is ``forward_head(x, pre_logits=True)`` (the pooled vector); ``HeadOnly`` is dropout(drop_rate) ->
  classifier, as in timm's heads.
- ``pooled``: the trainable parameters are all in ``model.head`` and that head starts with a parameter-free
  ``global_pool`` (FlexibleCNN: pool -> dense -> act -> drop -> fc; timm's ClassifierHead/NormMlpClassifierHead).
  The cached feature is ``head.global_pool(forward_features(x))``; ``HeadOnly`` runs the head with an identity pool.

The first batch of every extraction checks that ``HeadOnly(features)`` equals the full model's logits, so a model
whose ``forward_head`` does more than this (e.g. a ViT's token pooling) fails loudly instead of training wrong.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

__all__ = [
    "FeatureCache",
    "HeadOnly",
    "extract_features",
    "feature_cut",
    "why_no_feature_cache",
]

_IMAGE_KEYS = ("pixel_values", "image", "images")
_LABEL_KEYS = ("label", "labels")


def _trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def why_no_feature_cache(model: nn.Module) -> str | None:
    """None when the model can train on cached features, else the reason (for the trainer's ``auto`` log line)."""
    trainable = _trainable(model)
    if not trainable:
        return "the model has no trainable parameters"
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Module) and trainable <= _param_ids(classifier):
        return None
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module) or not trainable <= _param_ids(head):
        return "parameters outside the head are trainable (the feature cache needs freeze: head)"
    if not isinstance(getattr(head, "global_pool", None), nn.Module):
        return "the head has trainable layers before its classifier but no head.global_pool to cut at"
    if any(True for _ in head.global_pool.parameters()):
        return "head.global_pool has parameters (it must be frozen work to cache its output)"
    return None


def feature_cut(model: nn.Module) -> str:
    """``pre_logits`` or ``pooled`` (see the module docstring); ValueError when the model cannot use the cache."""
    reason = why_no_feature_cache(model)
    if reason is not None:
        raise ValueError(f"head feature cache unavailable for {type(model).__name__}: {reason}")
    classifier = model.get_classifier()
    return "pre_logits" if _trainable(model) <= _param_ids(classifier) else "pooled"


class HeadOnly(nn.Module):
    """The trainable rest of ``model`` after the cut: ``HeadOnly(model)(features)`` gives the model's logits.

    It shares the model's parameter objects (no copy): training it trains ``model``. Build it after freezing and
    after any ``reset_classifier``; ``train()``/``eval()`` on it also switch the shared head modules. Raises
    ValueError (from :func:`feature_cut`) when the model cannot train on cached features.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.cut = feature_cut(model)
        if self.cut == "pre_logits":
            # timm heads (resnet, ClassifierHead, NormMlpClassifierHead) apply drop_rate right before the classifier
            self.drop = nn.Dropout(float(getattr(model, "drop_rate", 0.0) or 0.0))
            self.tail = model.get_classifier()
        else:
            self.drop = nn.Identity()
            # a shallow copy of the head whose pool is an identity; its submodules (and parameters) are the model's
            tail = copy.copy(model.head)
            tail._modules = dict(model.head._modules)
            tail._modules["global_pool"] = nn.Identity()
            self.tail = tail
        self.train(model.training)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Cached float ``features`` ``(B, D)`` (see :func:`extract_features`) -> ``(B, num_classes)`` logits."""
        return self.tail(self.drop(features))


def _cut(model: nn.Module, fmap: torch.Tensor, cut: str) -> torch.Tensor:
    if cut == "pre_logits":
        return model.forward_head(fmap, pre_logits=True)
    return model.head.global_pool(fmap)


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        image = next((batch[k] for k in _IMAGE_KEYS if k in batch), None)
        label = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if image is None or label is None:
            raise TypeError(
                f"batch keys {sorted(batch)}: need one of {_IMAGE_KEYS} and one of {_LABEL_KEYS} to extract features"
            )
        return image, label
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"cannot find images and labels in a batch of type {type(batch).__name__}")


@contextmanager
def _eval_mode(model: nn.Module):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _progress(iterable: Iterable, total: int | None, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def extract_features(
    model: nn.Module,
    dataloader: Iterable,
    accelerator=None,
    *,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (at :func:`feature_cut`) and labels of every sample of ``dataloader``, on the CPU.

    Returns ``(features, labels)``: float32 ``(N, D)`` (``pre_logits``: the pooled vector; ``pooled``: the head's
    pooled input, ``(N, C)``, or ``(N, C*h*w)`` for a flatten head) and the labels as the loader gives them
    (``(N,)``, int64 for inat_zoo's loaders). Raises ValueError when the loader is empty or the model cannot use the
    cache, TypeError for batches without images and labels, RuntimeError when the cut does not replay the head.

    The model runs in eval mode (restored afterwards) under ``no_grad``: feed it the evaluation transform.
    Batches are ``(images, labels, ...)`` tuples or dicts with ``pixel_values``/``image`` and ``label``/``labels``.

    Several processes: pass the ``accelerator`` and a dataloader prepared by it. Each rank runs its own shard, and
    ``accelerator.gather_for_metrics`` after every batch assembles the whole split on EVERY rank (the duplicates DDP
    pads the last batch with are dropped), in rank-interleaved order, labels aligned. Train on it through a DataLoader
    prepared again by the accelerator, which shards it once more. Without an accelerator, batches are moved to the
    model's device.
    """
    cut = feature_cut(model)
    head = HeadOnly(model)
    device = next(model.parameters()).device
    feats, labels = [], []
    main = accelerator is None or accelerator.is_main_process
    total = len(dataloader) if hasattr(dataloader, "__len__") else None
    with _eval_mode(model), torch.no_grad():
        for i, batch in enumerate(_progress(dataloader, total, progress and main, desc)):
            images, y = _split_batch(batch)
            if accelerator is None:
                images, y = images.to(device, non_blocking=True), y.to(device, non_blocking=True)
            fmap = model.forward_features(images)
            f = _cut(model, fmap, cut)
            if i == 0:
                _check_cut(model, head, fmap[:4], f[:4])
            if accelerator is not None:
                f, y = accelerator.gather_for_metrics((f.contiguous(), y.contiguous()))
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    if not feats:
        raise ValueError("the dataloader yielded no batches: nothing to extract features from")
    return torch.cat(feats), torch.cat(labels)


def _check_cut(model: nn.Module, head: HeadOnly, fmap: torch.Tensor, feats: torch.Tensor) -> None:
    """HeadOnly on the cached features must give the model's own head output (``forward_head``) exactly."""
    expected = model.forward_head(fmap)
    got = head(feats)
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-4):
        raise RuntimeError(
            f"HeadOnly(features) differs from the logits of {type(model).__name__}: its forward_head does more than"
            " the feature cache replays; set train.head_feature_cache: false"
        )


class FeatureCache:
    """Features per split, computed once per run and kept in memory (the trainer's head-only path).

    ``FeatureCache(model).get(split, dataloader)`` extracts the split on first use (:func:`extract_features`) and
    returns the same ``TensorDataset(features, labels)`` after that.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._splits: dict[str, TensorDataset] = {}

    def get(self, split: str, dataloader: Iterable, accelerator=None, *, progress: bool = True) -> TensorDataset:
        """The split's ``TensorDataset(features, labels)`` (shapes: :func:`extract_features`): from memory, else
        extracted now through ``dataloader`` (and ``accelerator``, which gathers every rank's shard)."""
        if split not in self._splits:
            data = extract_features(self.model, dataloader, accelerator, desc=f"{split} features", progress=progress)
            self._splits[split] = TensorDataset(*data)
        return self._splits[split]
