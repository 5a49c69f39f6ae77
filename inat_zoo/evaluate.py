"""Test-set evaluation of any MODEL: metrics, confusion matrix, a 10x3 prediction grid, per-class CSV, W&B.

The model is fed exactly as timm would feed it: its own data config (``resolve_model_data_config``) through the data
layer's evaluation transform (resize + centre crop). Metrics are computed from one confusion matrix, so accuracy,
per-class scores and the matrix can never disagree. Outputs go to ``<run>/eval/`` (``<run>/eval_<split>/`` for
another split, or ``--out``), replaced as a whole and atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models import safe_model_name

from .atomic import atomic_directory, atomic_write_json, atomic_write_text
from .errors import UsageError
from .loading import RECIPE_FILE, LoadedModel, load_model, read_run_recipe
from .plots import RIGHT, WRONG, denormalize, new_figure, save_figure, show_image, suptitle

logger = logging.getLogger(__name__)

SPLITS = ("test", "validation", "train")
EVAL_FOLDER = "eval"
EVAL_FILES = ("metrics.json", "confusion_matrix.png", "predictions_grid.png", "per_class.csv")
GRID_PER_CLASS = 3


@dataclass
class EvalData:
    """One split of the data, ready for the model, and where it came from."""

    dataset: Any  # datasets.Dataset yielding {"pixel_values", "label"}
    labels: list[int]
    class_names: list[str]
    root: Path
    split: str


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_eval_data(loaded: LoadedModel, data_root: str | Path | None = None, split: str = "test") -> EvalData:
    """The ``split`` of ``data_root`` (default: the run's recipe, else the download cache), model-ready.

    The run's recipe also gives ``val_fraction`` and ``seed``, so ``split="validation"`` is the run's own split.
    """
    from .data import create_image_transform, load_inat12k, with_image_transform

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    recipe = read_run_recipe(loaded.run_dir)
    data_cfg = recipe.get("data") or {}
    if data_root is not None:
        where = "--data-root"
    elif data_cfg.get("root"):
        data_root, where = data_cfg["root"], f"{loaded.run_dir / RECIPE_FILE} (data.root)"
    else:
        from .data import default_root

        data_root, where = Path(default_root()) / "inaturalist_12K", "the default download location"
    root = Path(data_root).expanduser()
    try:  # a local folder, or a Hub dataset id (load_inat12k decides)
        dsdict = load_inat12k(root, val_fraction=data_cfg.get("val_fraction", 0.2), seed=recipe.get("seed", 42))
    except UsageError as e:
        raise UsageError(f"{e} (data root from {where}; pass --data-root DIR)") from e
    ds = dsdict[split]
    class_names = list(ds.features["label"].names)
    if len(class_names) != loaded.num_classes:
        raise UsageError(
            f"model {loaded.ref} predicts {loaded.num_classes} classes but {root} has {len(class_names)} "
            f"({', '.join(class_names)})"
        )
    if not loaded.label_names[0].startswith("class_") and class_names != loaded.label_names:
        logger.warning(
            "the model's label names %s differ from the data's class folders %s; scoring by index",
            loaded.label_names,
            class_names,
        )
    transform = create_image_transform(loaded.data_config, is_training=False)
    dataset = with_image_transform(ds, transform, loaded.data_config)
    return EvalData(dataset, list(ds["label"]), class_names, root, split)


@torch.inference_mode()
def predict_dataset(
    model: torch.nn.Module, dataset: Any, *, batch_size: int = 64, num_workers: int = 0, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) for every sample, in dataset order."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    logits, labels = [], []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        logits.append(model(batch["pixel_values"].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]))
    if not logits:
        raise UsageError("the split has no images to evaluate")
    return torch.cat(logits), torch.cat(labels)


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, top-5, loss, per-class precision/recall/F1, macro F1 and the confusion matrix (rows = truth)."""
    n, c = logits.shape
    preds = logits.argmax(1)
    cm = torch.bincount(labels * c + preds, minlength=c * c).reshape(c, c).double()
    tp, predicted, actual = cm.diag(), cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    k = min(5, c)
    topk = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean()
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "num_samples": n,
        "accuracy": float(tp.sum() / n),
        "top5_accuracy": float(topk),
        "top_k": k,
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": cm.long().tolist(),
    }


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


def evaluate(
    model_ref: str | LoadedModel,
    data_root: str | Path | None = None,
    split: str = "test",
    *,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    num_workers: int = 0,
    device: str | None = None,
    wandb: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate MODEL on a split; writes metrics.json, the two figures and per_class.csv.

    Returns the metrics.json content plus ``out_dir``. ``wandb=None`` follows the run recipe's ``track.wandb``.
    """
    loaded = model_ref if isinstance(model_ref, LoadedModel) else load_model(model_ref, device or default_device())
    data = load_eval_data(loaded, data_root, split)
    folder = EVAL_FOLDER if split == "test" else f"{EVAL_FOLDER}_{split}"  # keep <run>/eval for the test results
    out = Path(out_dir) if out_dir is not None else default_out_dir(loaded, folder)
    check_out_dir(out, EVAL_FILES)

    logits, labels = predict_dataset(
        loaded.model, data.dataset, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    metrics = {"model": loaded.ref, "split": split, "data_root": str(data.root)}
    metrics.update(compute_metrics(logits, labels, data.class_names))

    probs = logits.softmax(1)
    conf, preds = probs.max(1)
    rows = grid_indices(labels, len(data.class_names))
    mean, std = loaded.data_config["mean"], loaded.data_config["std"]
    grid = predictions_grid_figure(
        [[denormalize(data.dataset[i]["pixel_values"], mean, std) for i in row] for row in rows],
        [[int(labels[i]) for i in row] for row in rows],
        [[int(preds[i]) for i in row] for row in rows],
        [[float(conf[i]) for i in row] for row in rows],
        data.class_names,
        split=split,
    )
    title = f"{split}: accuracy {metrics['accuracy']:.1%} on {metrics['num_samples']} images"
    with atomic_directory(out, overwrite=True) as tmp:
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_text(tmp / "per_class.csv", _per_class_csv(metrics["per_class"]))
        save_figure(confusion_matrix_figure(metrics["confusion_matrix"], data.class_names, title), tmp / EVAL_FILES[1])
        save_figure(grid, tmp / "predictions_grid.png")

    recipe = read_run_recipe(loaded.run_dir)
    track = recipe.get("track") or {}
    if wandb if wandb is not None else bool(track.get("wandb")):
        _log_to_wandb(metrics, labels, preds, out, loaded, track)
    logger.info("wrote %s", out)
    return {**metrics, "out_dir": str(out)}


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
            keys = ("accuracy", "top5_accuracy", "loss", "macro_f1", "macro_precision", "macro_recall")
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
                    f"{split}/predictions_grid": wb.Image(str(out / "predictions_grid.png")),
                }
            )
            run.summary.update({f"{split}/{k}": metrics[k] for k in keys})
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001  (tracking is a side channel; the eval files are already written)
        logger.warning("W&B logging failed (%s: %s); the results are in %s", type(e).__name__, e, out)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--data-root", metavar="DIR", help="image folder (default: the run's recipe data.root)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split to score (default: test)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N")
    parser.add_argument("--num-workers", type=int, default=0, metavar="N", help="DataLoader workers")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: <run>/eval, <run>/eval_<split> for other splits)"
    )
    parser.add_argument(
        "--wandb", action=argparse.BooleanOptionalAction, default=None, help="log to W&B (default: the recipe's)"
    )


def run_cli(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers must be 0 or more, got {args.num_workers}")
    metrics = evaluate(
        args.model,
        args.data_root,
        args.split,
        batch_size=args.batch_size,
        out_dir=args.out,
        num_workers=args.num_workers,
        device=args.device,
        wandb=args.wandb,
    )
    print(
        f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}, top-{metrics['top_k']} "
        f"{metrics['top5_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} on {metrics['num_samples']} images "
        f"-> {metrics['out_dir']}"
    )
    return 0
