"""Test-time augmentation (TTA): the one evaluation (:mod:`inat_zoo.evaluation`) over several views of each image,
their class probabilities averaged.

Two modes, each a standard definition:

- ``flip``: the image as the plain evaluation sees it and its horizontal mirror. Hence 2 views.
- ``multi-crop``: five crops (the four corners and the centre, torchvision's ``FiveCrop``) of the model's input
  size, cut from the image at the evaluation resize (``size / crop_pct`` on the short side, timm's evaluation
  transform with its centre crop replaced): the five-crop evaluation of Krizhevsky et al. 2012 ("ImageNet
  Classification with Deep Convolutional Neural Networks", section 4.1, without its flips).

The views' **softmax probabilities** are averaged, not their logits: fastai's ``Learner.tta`` averages predictions
after the loss's activation (softmax), and so does the ten-crop evaluation of Krizhevsky et al.; timm's own scripts
have no TTA to follow. The averaged probabilities are returned as their logarithm (valid logits: their softmax is
the average), so :func:`inat_zoo.evaluation.compute_metrics` scores them unchanged, the loss being the
cross-entropy of the averaged probabilities.

Every view goes through :func:`inat_zoo.evaluation.model_logits` with the plain evaluation's decode
(:func:`inat_zoo.data.decode.read_rgb`), resize, normalisation, float32 math and batches; the plain evaluation itself
is never changed: TTA is reported beside it (``tta`` in eval/metrics.json), never instead of it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .errors import UsageError
from .evaluation import EVAL_BATCH_SIZE, EvalData, EvalImages, Evaluation, compute_metrics, model_logits, top_k_key

TTA_MODES = ("flip", "multi-crop")
_TINY = torch.finfo(torch.float32).tiny  # a probability that underflowed to 0 keeps a finite log
NUM_CROPS = 5
_DEFINITIONS = {
    "flip": "mean softmax probability over the image and its horizontal flip (fastai Learner.tta convention)",
    "multi-crop": "mean softmax probability over five crops (4 corners + centre, torchvision FiveCrop) at the "
    "evaluation resize (Krizhevsky et al. 2012)",
}


class _FlipView(torch.nn.Module):
    """The model's logits (N, C) of the horizontally mirrored input (N, 3, H, W): ``model(x.flip(-1))``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.flip(x, dims=(-1,)))


class _MeanOfCrops(torch.nn.Module):
    """Input (N, K, 3, H, W), K crops per image -> log of the mean softmax over the K crops, (N, C) float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[:2]
        probs = self.model(x.flatten(0, 1)).float().softmax(-1).view(n, k, -1)
        return probs.mean(1).clamp_min(_TINY).log()


class FiveCropTransform:
    """timm's evaluation transform with its centre crop replaced by torchvision's ``FiveCrop`` of the same size: a
    PIL image -> (5, 3, H, W) float32, normalised, crops in FiveCrop's order (top-left, top-right, bottom-left,
    bottom-right, centre). A module-level class: it pickles into DataLoader workers.

    Raises:
        UsageError: the evaluation transform has no plain centre crop (timm's ``crop_mode="border"``).
    """

    def __init__(self, eval_transform: Any):
        from torchvision import transforms as T

        steps = list(getattr(eval_transform, "transforms", []))
        crops = [i for i, step in enumerate(steps) if type(step) is T.CenterCrop]
        if len(crops) != 1:
            raise UsageError(
                "--tta multi-crop needs the model's evaluation transform to end in a centre crop (timm crop_mode "
                f"'center' or 'squash'); it is {[type(s).__name__ for s in steps]}"
            )
        i = crops[0]
        self.resize = T.Compose(steps[:i])
        self.five_crop = T.FiveCrop(steps[i].size)
        self.finish = T.Compose(steps[i + 1 :])

    def __call__(self, image) -> torch.Tensor:
        return torch.stack([self.finish(crop) for crop in self.five_crop(self.resize(image))])


def five_crop_images(images: EvalImages) -> EvalImages:
    """The same images (same values, labels, decode) whose items are the five crops, (5, 3, H, W) each."""
    crops = copy.copy(images)
    crops.transform = FiveCropTransform(images.transform)
    crops.shape = (NUM_CROPS, *images.shape)
    return crops


def check_tta(mode: str | None, images: EvalImages) -> None:
    """Refuse an unknown ``mode``, or a multi-crop the model's evaluation transform cannot give, before any pass runs.

    Raises:
        UsageError: naming ``--tta`` and the choices, or why multi-crop is not possible.
    """
    if mode is None:
        return
    if mode not in TTA_MODES:
        raise UsageError(f"unknown --tta mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    if mode == "multi-crop":
        FiveCropTransform(images.transform)


def mean_softmax_log(*view_logits: torch.Tensor) -> torch.Tensor:
    """Log of the mean softmax of several views' logits, each (N, C): (N, C) float32 log-probabilities (a mean
    probability that underflows to 0 is raised to the smallest float32, so its log stays finite)."""
    return torch.stack([logits.float().softmax(-1) for logits in view_logits]).mean(0).clamp_min(_TINY).log()


def tta_logits(
    model: torch.nn.Module,
    images: EvalImages,
    mode: str,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log of the mean softmax over the ``mode``'s views, (N, C) float32 on the CPU, and the readable mask (N,) bool,
    for every image of ``images`` (rows of unreadable images are meaningless, as in ``model_logits``).

    Raises:
        UsageError: an unknown ``mode``, or a multi-crop of a transform without a centre crop.
    """
    check_tta(mode, images)
    kwargs = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    if mode == "flip":
        plain, ok = model_logits(model, images, **kwargs, desc="tta plain")
        flipped, _ = model_logits(_FlipView(model), images, **kwargs, desc="tta flip")
        return mean_softmax_log(plain, flipped), ok
    return model_logits(_MeanOfCrops(model), five_crop_images(images), **kwargs, desc="tta multi-crop")


def evaluate_tta(
    model: torch.nn.Module,
    data: EvalData,
    plain: Evaluation,
    mode: str,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``tta`` block of eval/metrics.json: accuracy, top-k, macro F1/precision/recall, loss (nats) and
    ``num_samples`` of the TTA predictions over exactly the images the plain evaluation ``plain`` scored, and the
    mode's definition. The flip mode reuses ``plain.logits`` as its unflipped view (one extra pass, not two).

    Raises:
        UsageError: as :func:`check_tta`.
    """
    check_tta(mode, data.images)
    keep = torch.tensor(plain.indices, dtype=torch.long)
    kwargs = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    if mode == "flip":
        flipped, _ = model_logits(_FlipView(model), data.images, **kwargs, desc="tta flip")
        logits = mean_softmax_log(plain.logits, flipped[keep])
    else:
        logits = tta_logits(model, data.images, mode, **kwargs)[0][keep]
    metrics = compute_metrics(logits, plain.labels, list(data.class_names), warn=False, split=data.split)
    k = metrics["top_k"]
    fields = ("accuracy", top_k_key(k), "top_k", "macro_f1", "macro_precision", "macro_recall", "loss", "num_samples")
    return {"mode": mode, **{key: metrics[key] for key in fields}, "definition": _DEFINITIONS[mode]}
