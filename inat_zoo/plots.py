"""Figure helpers shared by evaluate and explain: headless, no pyplot state, nothing left open.

Figures are built as plain ``matplotlib.figure.Figure`` objects (not through ``pyplot``), so they never enter
pyplot's global registry: there is nothing to close, they render with Agg whatever the configured backend and are
freed when dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

RIGHT = "#1a7f37"  # green
WRONG = "#d1242f"  # red


def new_grid(
    nrows: int,
    ncols: int,
    cell: tuple[float, float] = (2.0, 2.0),
    title_space: float = 0.5,
    width_ratios: Sequence[float] | None = None,
) -> tuple[Figure, GridSpec]:
    """A figure and an ``nrows x ncols`` grid spec, each cell ``cell`` inches (columns scaled by ``width_ratios``),
    room for a suptitle; for layouts where one axes spans several cells. Fixed margins rather than constrained
    layout: the layout solver costs seconds on grids of dozens of axes."""
    axes_titles = 0.3  # the two-line titles above the first row of axes sit below the suptitle
    title_space += axes_titles
    columns = sum(width_ratios) if width_ratios else ncols
    width, height = max(1.0, columns * cell[0]), max(1.0, nrows * cell[1]) + title_space
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(
        nrows,
        ncols,
        left=0.1 / width,
        right=1 - 0.1 / width,
        bottom=0.1 / height,
        top=1 - title_space / height,
        hspace=0.45 / max(0.5, cell[1] - 0.45),  # two title lines between rows
        wspace=0.15 / max(0.5, cell[0] - 0.15),
        width_ratios=width_ratios,
    )
    return fig, grid


def new_figure(
    nrows: int, ncols: int, cell: tuple[float, float] = (2.0, 2.0), title_space: float = 0.5
) -> tuple[Figure, np.ndarray]:
    """A figure with an ``nrows x ncols`` array of axes (always 2-D), each ``cell`` inches, room for a suptitle."""
    fig, grid = new_grid(nrows, ncols, cell, title_space)
    return fig, grid.subplots(squeeze=False)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render to PNG (Agg, whatever the configured backend)."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def tile(images: Sequence[np.ndarray], cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Equal-sized images (H, W) or (H, W, 3) in a ``cols``-wide mosaic with ``pad`` pixels of ``fill`` between and
    around them: float32 (rows * (H + pad) + pad, cols * (W + pad) + pad[, 3]), by ``torchvision.utils.make_grid``
    (which leaves a single image as it is, without a border).

    One picture drawn in one axes instead of dozens of axes: grids of filters stay fast to render.
    """
    from torchvision.utils import make_grid

    batch = torch.stack([torch.as_tensor(np.asarray(image, dtype=np.float32)) for image in images])
    grey = batch.dim() == 3  # (N, H, W): make_grid repeats a single channel into three; one is kept
    batch = batch.unsqueeze(1) if grey else batch.permute(0, 3, 1, 2)
    grid = make_grid(batch, nrow=cols, padding=pad, pad_value=fill)
    return (grid[0] if grey else grid.permute(1, 2, 0)).contiguous().numpy()


def denormalize(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Model input (C,H,W) or (N,C,H,W), normalised with ``mean``/``std`` -> HWC (or NHWC) floats in [0, 1]."""
    x = pixel_values.detach().float().cpu()
    shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
    x = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    x = x.clamp(0, 1)
    return (x.permute(1, 2, 0) if x.dim() == 3 else x.permute(0, 2, 3, 1)).numpy()


def show_image(ax: Axes, image: np.ndarray, title: str | None = None, color: str | None = None, **kwargs) -> None:
    """Draw an image without ticks; a coloured frame and title mark right (green) or wrong (red) when given."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=7, color=color or "black")
    if color is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3)


def minmax(a: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] for display, as float32 of the same shape (a constant array becomes zeros)."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def suptitle(fig: Figure, text: str, **kwargs) -> None:
    """A figure title pinned 0.05 inch below the top edge (matplotlib's default y is a fraction: on tall grids it
    drifts down into the first row's titles), wrapped to the figure's width so a narrow figure (one image) never
    clips it."""
    import textwrap

    fontsize = kwargs.get("fontsize", 12)
    chars = max(12, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))  # ~0.6 em per character
    text = "\n".join(textwrap.fill(line, chars) for line in text.splitlines())
    fig.suptitle(text, y=1 - 0.05 / fig.get_figheight(), va="top", **kwargs)


# ------------------------------------------------------------------------------------------ training curves
def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch (train and validation) from history.jsonl, as one PNG; the kept epoch marked."""
    training_curves_figure(history, best_epoch).savefig(path, format="png")
    return Path(path)


def training_curves_figure(history: Sequence[dict[str, Any]], best_epoch: int | None = None):
    """The matplotlib ``Figure`` (no pyplot) of :func:`plot_training_curves`, for the trackers' pictures too."""
    from matplotlib.ticker import MaxNLocator

    epochs = [record.get("epoch", i) for i, record in enumerate(history)]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        for split in ("train", "val"):
            values = [record.get(f"{split}_{metric}") for record in history]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if isinstance(v, (int, float))]
            if points:
                label = "train" if split == "train" else "validation"
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    return fig
