"""The training criterion and the batch mixing before it: what ``Trainer._train_step`` calls as
``images, targets = mixup(images, labels, epoch, step)`` then ``loss = criterion(logits, targets)``.

- :func:`create_criterion`: cross-entropy with ``train.label_smoothing`` (Szegedy et al. 2016) and optional class
  weights (``train.class_weights``); with mixup, timm's ``SoftTargetCrossEntropy`` or, with class weights,
  :class:`WeightedSoftTargetCrossEntropy` (timm's has no weights).
- :func:`create_mixup`: timm's ``Mixup`` (mixup, Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization";
  CutMix, Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features")
  wrapped by :class:`SeededMixup`, whose draws are a function of (seed, epoch, step, rank) only; :class:`NoMixup`
  when ``train.mixup`` is null.
- :func:`class_weights`: ``train.class_weights`` as a tensor (``balanced``: sklearn's n_samples / (n_classes *
  count_c) over the train split's labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.seeding import MIXUP_STREAM, derive_seed, preserved_global_rngs, reseed_global_rngs
from ..errors import UsageError
from ..recipe_schema import Recipe


def class_weights(recipe: Recipe, train_labels: Sequence[int], num_classes: int) -> torch.Tensor | None:
    """``train.class_weights`` as a ``(num_classes,)`` float32 tensor, or None when unset.

    ``balanced`` is scikit-learn's ``compute_class_weight('balanced')``: ``n_samples / (n_classes * count_c)`` over
    ``train_labels`` (int class indices of the train split). Raises :class:`UsageError` when a list does not give
    one weight per class, or when ``balanced`` meets a class without training images.
    """
    setting = recipe.train.class_weights
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
        if (counts == 0).any():
            missing = np.flatnonzero(counts == 0).tolist()
            raise UsageError(f"train.class_weights=balanced: classes {missing} have no training images")
        return torch.tensor(len(train_labels) / (num_classes * counts), dtype=torch.float32)
    check_class_weight_count(setting, num_classes)
    return torch.tensor(setting, dtype=torch.float32)


def check_class_weight_count(weights, num_classes: int) -> None:
    """Raises :class:`UsageError` unless a ``train.class_weights`` list has one weight per class."""
    if isinstance(weights, list) and len(weights) != num_classes:
        raise UsageError(
            f"recipe key 'train.class_weights' has {len(weights)} weights; the data has {num_classes} classes: give "
            "one weight per class, in label order (or balanced)"
        )


class WeightedSoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets with per-class weights ``w``:

        loss = sum_i sum_c w_c t_ic (-log p_ic)  /  sum_i sum_c w_c t_ic

    with ``p = softmax(logits)``. For one-hot targets it is exactly torch's weighted ``cross_entropy`` (weighted mean
    over the batch); for equal weights, timm's ``SoftTargetCrossEntropy``. A mixed target weighs each image by the
    mix of its two classes' weights. ``logits`` and ``target`` are ``(B, C)`` float; returns a float32 scalar.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted loss of ``logits`` ``(B, C)`` against soft ``target`` ``(B, C)`` (rows sum to 1): a scalar."""
        weighted = target * self.weight  # (B, C)
        return (-weighted * F.log_softmax(logits.float(), dim=-1)).sum() / weighted.sum()


def create_criterion(recipe: Recipe, weight: torch.Tensor | None, *, soft_targets: bool) -> nn.Module:
    """The training loss ``criterion(logits (B, C) float, targets) -> scalar``.

    ``targets`` are ``(B,)`` int64 labels (torch's ``CrossEntropyLoss`` with ``train.label_smoothing`` and ``weight``)
    or, with ``soft_targets`` (mixup on: the smoothing is then in the targets, timm's way), ``(B, C)`` float class
    probabilities (timm's ``SoftTargetCrossEntropy``, or :class:`WeightedSoftTargetCrossEntropy` with ``weight``).
    """
    if not soft_targets:
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.train.label_smoothing)
    if weight is not None:
        return WeightedSoftTargetCrossEntropy(weight)
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()


def dominant_labels(targets: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64 labels of ``targets``: themselves, or for ``(B, C)`` soft targets (mixup) the class with the
    largest share (the image's own label when it kept more than half, its partner's otherwise)."""
    return targets if targets.dim() == 1 else targets.argmax(1)


class NoMixup:
    """The identity ``(images, labels, epoch, step) -> (images, labels)``, when ``train.mixup`` is null."""

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        return images, labels


class SeededMixup:
    """timm's ``Mixup`` with its randomness a function of (seed, epoch, step, rank) only.

    timm draws lambda, the mix/CutMix switch and the CutMix box from numpy's global RNG (``np.random``), so left
    alone the mixes would follow whatever else drew from it and a resumed run would mix differently. Here each call
    reseeds the global RNGs with ``derive_seed(seed, MIXUP_STREAM, epoch, step, rank)`` inside
    :func:`~inat_zoo.data.seeding.preserved_global_rngs`, which puts the caller's state (dropout's stream) back.
    From ``off_epoch`` (1-based) on, nothing is mixed (timm train.py's ``--mixup-off-epoch``); the targets stay
    timm's soft, smoothed ones so the criterion does not change mid-run.

    Call with ``images`` ``(B, C, H, W)`` float (mixed in place) and ``labels`` ``(B,)`` int64, B even; returns
    ``(images, targets)`` with ``targets`` ``(B, num_classes)`` float. timm raises AssertionError for an odd B
    (the trainer's pre-flight refuses an odd ``train.batch_size`` first).
    """

    def __init__(self, mixup, seed: int, rank: int, off_epoch: int | None) -> None:
        self.mixup, self.seed, self.rank, self.off_epoch = mixup, seed, rank, off_epoch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        self.mixup.mixup_enabled = self.off_epoch is None or epoch < self.off_epoch
        with preserved_global_rngs():
            reseed_global_rngs(derive_seed(self.seed, MIXUP_STREAM, epoch, step, self.rank))
            return self.mixup(images, labels)


def create_mixup(recipe: Recipe, num_classes: int, rank: int) -> SeededMixup | NoMixup:
    """``train.mixup`` as :class:`SeededMixup` over timm's ``Mixup`` (its label smoothing is
    ``train.label_smoothing``, as timm's train.py passes it), or :class:`NoMixup` when null."""
    options = recipe.train.mixup
    if options is None:
        return NoMixup()
    from timm.data import Mixup

    mixup = Mixup(
        mixup_alpha=options.mixup_alpha,
        cutmix_alpha=options.cutmix_alpha,
        prob=options.prob,
        switch_prob=options.switch_prob,
        mode=options.mode,
        label_smoothing=recipe.train.label_smoothing,
        num_classes=num_classes,
    )
    return SeededMixup(mixup, recipe.seed, rank, options.off_epoch)
