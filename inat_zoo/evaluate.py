"""``inat-zoo evaluate``: the one evaluation of a model on a split, written out as metrics, a confusion matrix, a
10x3 grid of predictions, a per-class CSV and the error analysis (most-confused pairs, top losses; optional
test-time augmentation beside the plain figures).

The numbers come from :func:`inat_zoo.evaluation.evaluate_split` (the one evaluation: images, logits and metrics by
one rule, see :mod:`inat_zoo.evaluation`); this module draws and writes them. The evaluation's names stay importable
from here (``from inat_zoo.evaluate import evaluate_split, load_eval_data, ...``).

Outputs of ``inat-zoo evaluate`` go to ``<run>/eval/`` (``<run>/eval_<split>/`` for another split, or ``--out``),
replaced as a whole and atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models import safe_model_name

from .atomic import atomic_directory, atomic_write_text
from .errors import UsageError
from .evaluation import (
    EVAL_BATCH_SIZE,
    EVAL_RULE,
    MAX_TOP_K,
    SPLITS,
    EvalData,
    EvalImages,
    Evaluation,
    compute_metrics,
    default_device,
    evaluate_split,
    evaluation_rule,
    final_test_metrics,
    float32_math,
    load_eval_data,
    model_logits,
    scalar_metrics,
    top_k_key,
)
from .interpretation import most_confused, top_losses, top_losses_figure
from .loading import LoadedModel, load_model, read_run_recipe
from .plots import RIGHT, WRONG, denormalize, new_figure, save_figure, show_image, suptitle
from .rundir import EVAL_FILES, eval_folder, write_metrics
from .tta import TTA_MODES, check_tta, evaluate_tta

logger = logging.getLogger(__name__)

GRID_PER_CLASS = 3


# -------------------------------------------------------------------------------------------- the figures
def grid_indices(labels: torch.Tensor, num_classes: int, per_class: int = GRID_PER_CLASS) -> list[list[int]]:
    """The first ``per_class`` sample indices of every class (fewer when a class has fewer)."""
    return [torch.nonzero(labels == c).flatten()[:per_class].tolist() for c in range(num_classes)]


def confusion_matrix_figure(cm: list[list[int]], class_names: list[str], title: str = "Confusion matrix"):
    """Counts as a heat map with the numbers written in; rows are the true classes."""
    m = np.asarray(cm)
    from matplotlib.figure import Figure

    size = max(4.0, 0.55 * len(class_names) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")  # one axes: the layout solver is cheap, labels fit
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = m.max() / 2 if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > threshold else "black")
    return fig


def predictions_grid_figure(
    images: list[list[np.ndarray]],
    true_labels: list[list[int]],
    pred_labels: list[list[int]],
    confidences: list[list[float]],
    class_names: list[str],
    per_class: int = GRID_PER_CLASS,
    split: str = "test",
):
    """One row per class, ``per_class`` columns: true/pred label and confidence; wrong predictions in red."""
    fig, axes = new_figure(len(class_names), per_class, cell=(2.2, 2.4))
    for row, ax_row in enumerate(axes):
        for col, ax in enumerate(ax_row):
            if col >= len(images[row]):
                ax.axis("off")
                continue
            t, p, conf = true_labels[row][col], pred_labels[row][col], confidences[row][col]
            ok = t == p
            title = f"true: {class_names[t]}\npred: {class_names[p]} ({conf:.0%})"
            show_image(ax, images[row][col], title, color=RIGHT if ok else WRONG)
    suptitle(fig, f"Predictions on the {split} split (red = wrong)")
    return fig


def default_out_dir(loaded: LoadedModel, folder: str) -> Path:
    """``<run>/<folder>``; for a model without a run (hf-hub:, timm name) ``./<folder>_<model name>``."""
    if loaded.run_dir is not None:
        return loaded.run_dir / folder
    return Path.cwd() / f"{folder}_{safe_model_name(loaded.ref)}"


def check_out_dir(out: Path, known_files: tuple[str, ...]) -> None:
    """Refuse to replace a folder that holds anything but our own previous outputs."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"output path {out} exists and is not a folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in known_files)
        if foreign:
            raise UsageError(f"output folder {out} holds other files ({', '.join(foreign[:5])}); choose another --out")


# ------------------------------------------------------------------------------------------ inat-zoo evaluate
def evaluate(
    model_ref: str | LoadedModel,
    data_root: str | Path | None = None,
    split: str = "test",
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    out_dir: str | Path | None = None,
    num_workers: int = 0,
    device: str | None = None,
    wandb: bool | None = None,
    progress: bool = True,
    tta: str | None = None,
) -> dict[str, Any]:
    """Evaluate MODEL on a split with :func:`evaluate_split`; writes metrics.json, the three figures (confusion
    matrix, predictions grid, top losses) and per_class.csv.

    metrics.json also holds ``most_confused`` and ``top_losses`` (:mod:`inat_zoo.interpretation`) and, with ``tta``
    (``"flip"`` or ``"multi-crop"``, :mod:`inat_zoo.tta`), a ``tta`` block beside the unchanged plain figures.
    Returns the metrics.json content plus ``out_dir``. ``wandb=None`` follows the run recipe's ``track.wandb``.

    Raises:
        UsageError: as :func:`load_eval_data`, :func:`check_out_dir` and :func:`inat_zoo.tta.check_tta`, all before
            anything is written.
    """
    loaded = model_ref if isinstance(model_ref, LoadedModel) else load_model(model_ref, device or default_device())
    data = load_eval_data(loaded, data_root, split)
    check_tta(tta, data.images)
    # keep <run>/eval for the test results
    out = Path(out_dir) if out_dir is not None else default_out_dir(loaded, eval_folder(split))
    check_out_dir(out, EVAL_FILES)

    result = evaluate_split(loaded, data, batch_size=batch_size, num_workers=num_workers, progress=progress)
    metrics = {"model": loaded.ref, "split": split, "data_root": str(data.root), **result.metrics}
    if tta is not None:
        metrics["tta"] = evaluate_tta(
            loaded.model, data, result, tta, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
    metrics["most_confused"] = most_confused(metrics["confusion_matrix"], data.class_names)
    names = [data.images.name(i) for i in result.indices]
    losses = top_losses(result.logits, result.labels, data.class_names, names)
    metrics["top_losses"] = [{k: v for k, v in e.items() if k != "row"} for e in losses]
    figures = _figures(loaded, data, result, metrics, losses)
    with atomic_directory(out, overwrite=True) as tmp:
        write_metrics(tmp, metrics)
        atomic_write_text(tmp / EVAL_FILES[3], _per_class_csv(metrics["per_class"]))
        for name, figure in figures.items():
            save_figure(figure, tmp / name)

    recipe = read_run_recipe(loaded.run_dir)
    track = recipe.get("track") or {}
    if wandb if wandb is not None else bool(track.get("wandb")):
        _log_to_wandb(metrics, result.labels, result.logits.argmax(1), out, loaded, track)
    logger.info("wrote %s", out)
    return {**metrics, "out_dir": str(out)}


def _figures(
    loaded: LoadedModel, data: EvalData, result: Evaluation, metrics: dict[str, Any], losses: list[dict[str, Any]]
) -> dict[str, Any]:
    """The evaluation's pictures by file name: confusion matrix, predictions grid and top losses (``losses``: the
    entries of :func:`inat_zoo.interpretation.top_losses`, whose ``row`` indexes ``result``)."""
    _metrics_file, confusion_file, grid_file, _per_class_file, top_losses_file = EVAL_FILES
    split = data.split
    conf, preds = result.logits.softmax(1).max(1)
    rows = grid_indices(result.labels, len(data.class_names))
    mean, std = loaded.data_config["mean"], loaded.data_config["std"]

    def picture(row: int) -> np.ndarray:
        return denormalize(data.images.pixels(result.indices[row]), mean, std)

    grid = predictions_grid_figure(
        [[picture(i) for i in row] for row in rows],
        [[int(result.labels[i]) for i in row] for row in rows],
        [[int(preds[i]) for i in row] for row in rows],
        [[float(conf[i]) for i in row] for row in rows],
        data.class_names,
        split=split,
    )
    title = f"{split}: accuracy {metrics['accuracy']:.1%} on {metrics['num_samples']} images"
    return {
        confusion_file: confusion_matrix_figure(metrics["confusion_matrix"], data.class_names, title),
        grid_file: grid,
        top_losses_file: top_losses_figure(losses, [picture(e["row"]) for e in losses], split),
    }


def _per_class_csv(per_class: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["class", "precision", "recall", "f1", "support"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(per_class)
    return buf.getvalue()


def _log_to_wandb(
    metrics: dict[str, Any],
    labels: torch.Tensor,
    preds: torch.Tensor,
    out: Path,
    loaded: LoadedModel,
    track: dict[str, Any],
) -> None:
    """One W&B run (job_type evaluate): scalars, confusion-matrix plot, per-class table, the grid image.

    The files on disk are already complete; a W&B failure (no login for an online run, ...) is reported, not raised.
    """
    import wandb as wb

    split = metrics["split"]
    try:
        run = wb.init(
            project=track.get("project", "inat_zoo"),
            mode=os.environ.get("WANDB_MODE") or track.get("mode", "offline"),
            dir=str(loaded.run_dir or out),
            job_type="evaluate",
            name=f"{(loaded.run_dir or out).name}-eval-{split}",
            config={"model": loaded.ref, "split": split, "data_root": metrics["data_root"]},
            reinit="finish_previous",
        )
        try:
            keys = ("accuracy", top_k_key(metrics["top_k"]), "loss", "macro_f1", "macro_precision", "macro_recall")
            table = wb.Table(columns=["class", "precision", "recall", "f1", "support"])
            for row in metrics["per_class"]:
                table.add_data(row["class"], row["precision"], row["recall"], row["f1"], row["support"])
            run.log(
                {
                    **{f"{split}/{k}": metrics[k] for k in keys},
                    f"{split}/confusion_matrix": wb.plot.confusion_matrix(
                        y_true=labels.tolist(), preds=preds.tolist(), class_names=metrics["class_names"]
                    ),
                    f"{split}/per_class": table,
                    f"{split}/predictions_grid": wb.Image(str(out / EVAL_FILES[2])),
                }
            )
            run.summary.update({f"{split}/{k}": metrics[k] for k in keys})
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001  (tracking is a side channel; the eval files are already written)
        logger.warning("W&B logging failed (%s: %s); the results are in %s", type(e).__name__, e, out)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo evaluate`` to ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--data-root", metavar="DIR", help="image folder (default: the run's recipe data.root)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split to score (default: test)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        metavar="N",
        help=f"images per batch (default {EVAL_BATCH_SIZE}, as training's final test pass: another size can move the "
        "last digits of the loss)",
    )
    parser.add_argument("--num-workers", type=int, default=0, metavar="N", help="DataLoader workers")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: <run>/eval, <run>/eval_<split> for other splits)"
    )
    parser.add_argument(
        "--wandb", action=argparse.BooleanOptionalAction, default=None, help="log to W&B (default: the recipe's)"
    )
    parser.add_argument(
        "--tta",
        metavar="MODE",
        default=None,
        help="also score with test-time augmentation, reported beside the plain figures as 'tta': flip (image + "
        "horizontal flip) or multi-crop (four corners + centre); softmax probabilities averaged. One of: "
        + ", ".join(TTA_MODES),
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo evaluate`` and print the summary line; returns 0.

    Raises:
        UsageError: ``--batch-size`` below 1, negative ``--num-workers``, an unknown ``--tta`` mode (and whatever
            :func:`evaluate` raises).
    """
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.tta is not None and args.tta not in TTA_MODES:  # before the model loads (evaluate checks it again)
        raise UsageError(f"unknown --tta mode {args.tta!r}; choose one of {', '.join(TTA_MODES)}")
    metrics = evaluate(
        args.model,
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        out_dir=args.out,
        num_workers=args.num_workers,
        device=args.device,
        wandb=args.wandb,
        tta=args.tta,
    )
    k = metrics["top_k"]
    tta = metrics.get("tta")
    tta_text = f", TTA ({tta['mode']}) accuracy {tta['accuracy']:.4f}" if tta else ""
    print(
        f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}, top-{k} {metrics[top_k_key(k)]:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f}{tta_text} on {metrics['num_samples']} images -> {metrics['out_dir']}"
    )
    return 0


# the evaluation's names are re-exported: other modules and tests import them from inat_zoo.evaluate
__all__ = [
    "EVAL_BATCH_SIZE",
    "EVAL_RULE",
    "GRID_PER_CLASS",
    "MAX_TOP_K",
    "SPLITS",
    "EvalData",
    "EvalImages",
    "Evaluation",
    "check_out_dir",
    "compute_metrics",
    "configure_parser",
    "confusion_matrix_figure",
    "default_device",
    "default_out_dir",
    "evaluate",
    "evaluate_split",
    "evaluation_rule",
    "final_test_metrics",
    "float32_math",
    "grid_indices",
    "load_eval_data",
    "model_logits",
    "predictions_grid_figure",
    "run_cli",
    "scalar_metrics",
    "top_k_key",
]
