"""Error analysis of one evaluation: the most-confused class pairs and the top losses, as fastai's
``ClassificationInterpretation`` gives them (``most_confused(min_val=1)``, ``top_losses``, ``plot_top_losses``).

Both are computed from the one evaluation's result (:class:`inat_zoo.evaluation.Evaluation`: its confusion matrix, its
float32 logits and labels), never from another pass, so they agree with the accuracy beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .plots import RIGHT, WRONG, new_figure, show_image, suptitle

TOP_LOSSES = 9  # fastai's plot_top_losses shows k images; 9 fill a 3x3 grid


def most_confused(confusion_matrix: Sequence[Sequence[int]], class_names: Sequence[str], min_val: int = 1) -> list:
    """The off-diagonal cells of a confusion matrix (rows = true class) with at least ``min_val`` images, as
    ``[{"true", "predicted", "count"}, ...]`` sorted by count, descending; ties keep row-major order. This is fastai's
    ``ClassificationInterpretation.most_confused(min_val=1)`` (a stable sort of ``np.where(cm >= min_val)``).
    """
    cm = np.asarray(confusion_matrix, dtype=np.int64).copy()
    np.fill_diagonal(cm, 0)
    cells = [
        {"true": class_names[i], "predicted": class_names[j], "count": int(cm[i, j])}
        for i, j in zip(*np.where(cm >= min_val), strict=True)
    ]
    return sorted(cells, key=lambda cell: cell["count"], reverse=True)


def top_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    names: Sequence[str],
    k: int = TOP_LOSSES,
) -> list[dict[str, Any]]:
    """The ``k`` images with the highest cross-entropy loss, highest first (fastai's ``top_losses(k)``).

    Args:
        logits: (N, C) float logits of the N scored images.
        labels: (N,) int64 true classes.
        class_names: the C class names.
        names: the N images' names (paths), in row order.
        k: how many (fewer when N < k).

    Returns:
        ``[{"row", "image", "true", "predicted", "true_probability", "predicted_probability", "loss"}, ...]``:
        ``row`` indexes ``logits``; probabilities are softmax fractions in [0, 1]; ``loss`` in nats (float64).
    """
    losses = torch.nn.functional.cross_entropy(logits.double(), labels.long(), reduction="none")
    probs = logits.double().softmax(1)
    order = torch.argsort(losses, descending=True, stable=True)[: min(k, len(losses))]
    out = []
    for row in order.tolist():
        pred, true = int(probs[row].argmax()), int(labels[row])
        out.append(
            {
                "row": row,
                "image": names[row],
                "true": class_names[true],
                "predicted": class_names[pred],
                "true_probability": float(probs[row, true]),
                "predicted_probability": float(probs[row, pred]),
                "loss": float(losses[row]),
            }
        )
    return out


def top_losses_figure(entries: Sequence[dict[str, Any]], images: Sequence[np.ndarray], split: str = "test"):
    """fastai's ``plot_top_losses``: each image titled ``true (p) / pred (p) / loss``, wrong ones framed red.

    ``images`` are (H, W, 3) floats in [0, 1], one per entry of :func:`top_losses`.
    """
    cols = min(3, max(1, len(entries)))
    rows = max(1, -(-len(entries) // cols))
    fig, axes = new_figure(rows, cols, cell=(2.4, 2.7), title_space=0.7)
    for i, ax in enumerate(axes.flat):
        if i >= len(entries):
            ax.axis("off")
            continue
        e = entries[i]
        title = (
            f"true: {e['true']} ({e['true_probability']:.0%})\npred: {e['predicted']} "
            f"({e['predicted_probability']:.0%})\nloss {e['loss']:.2f}"
        )
        show_image(ax, images[i], title, color=RIGHT if e["true"] == e["predicted"] else WRONG)
    suptitle(fig, f"Top losses on the {split} split: true / predicted (probability) / loss")
    return fig
