"""Top-k labels for image files, folders and glob patterns with any MODEL, through the one evaluation rule.

Images are decoded and preprocessed exactly as ``inat-zoo evaluate`` and training's final test pass do
(:func:`inat_zoo.evaluation.model_logits`: full-resolution decode with EXIF orientation, the model's timm evaluation
transform, float32, the same batches), so a test image gets the same prediction here as in the evaluation.

IMAGE arguments are files, folders (their image files, recursively, sorted) and glob patterns (``'photos/**/*.jpg'``,
quoted so the shell leaves them to us: ``glob.glob(pattern, recursive=True)``, sorted); an image reached twice is
predicted once. Unreadable images, wherever they were found:

- without ``--skip-bad`` (``skip_bad=False``) they stop the command with one line, ``inat-zoo: error: <file>:
  <reason>`` (exit 2), before anything is written: a file named on the command line is checked before the model is
  loaded, the images of folders and patterns as they are scored;
- with ``--skip-bad`` they are left out of the results and named in one summary line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.decode import format_skipped, image_files_in, read_image_file
from .errors import UsageError
from .loading import LoadedModel, load_model

logger = logging.getLogger(__name__)


def read_image(path: str | Path):
    """An image named by the user, decoded by the one rule; any failure is ``UsageError("<file>: <reason>")``."""
    return read_image_file(path)


def expand_images(arguments: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """Every image an IMAGE argument stands for, in argument order, each once: ``(path, named)``, ``named`` being
    True for a file given as such (not found in a folder or by a pattern).

    An argument that exists is a file or a folder (its image files, recursively, sorted); otherwise, when it holds
    ``*``, ``?`` or ``[``, a glob pattern (``glob.glob(arg, recursive=True)``, sorted; matched folders are expanded
    like folders); otherwise a file (checked later).

    Raises:
        UsageError: a folder without image files, or a pattern that matches nothing.
    """
    found: dict[Path, bool] = {}
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            inside = image_files_in(path)
            if not inside:
                raise UsageError(f"{path}: folder holds no image files")
            matched = [(p, False) for p in inside]
        elif not path.exists() and glob.has_magic(str(arg)):
            hits = sorted(glob.glob(str(arg), recursive=True))
            if not hits:
                raise UsageError(f"{arg}: the pattern matches no file")
            matched = [(p, False) for hit in hits for p in (image_files_in(hit) if Path(hit).is_dir() else [hit])]
        else:
            matched = [(path, True)]
        for p, named in matched:
            found.setdefault(Path(p), named)
    return list(found.items())


def collect_images(arguments: Sequence[str | Path], *, skip_bad: bool = False) -> list[Path]:
    """The images of :func:`expand_images`; without ``skip_bad`` each file named as such is checked now (a
    :class:`UsageError` ``<file>: <reason>`` otherwise), the others are read when scored."""
    expanded = expand_images(arguments)
    if not skip_bad:
        for path, named in expanded:
            if named:
                read_image_file(path)
    return [path for path, _ in expanded]


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; any other value as given."""
    from .evaluation import default_device

    return default_device() if device in (None, "auto") else str(device)


@dataclass
class Predictions:
    """What one prediction run gives: ``results`` (as :func:`predict` returns them) and the ``skipped`` images
    (name -> why unreadable; empty without ``skip_bad``, which raises instead)."""

    results: list[dict[str, Any]]
    top_k: int
    skipped: dict[str, str] = field(default_factory=dict)


def run_predictions(
    images: Sequence[str | Path],
    model: str | LoadedModel,
    top_k: int = 5,
    device: str | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    skip_bad: bool = False,
) -> Predictions:
    """:func:`predict`, with the skipped images returned instead of logged (the CLI names them in one line).

    Raises:
        UsageError: as :func:`predict`.
    """
    from .evaluation import EVAL_BATCH_SIZE, EvalImages, model_logits

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not images:
        raise UsageError("no IMAGE given")
    files = collect_images(images, skip_bad=skip_bad)  # files named as such checked before the model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model, resolve_device(device))
    source = EvalImages([str(f) for f in files], loaded.data_config, split="images")
    batch_size = batch_size or EVAL_BATCH_SIZE
    long_run = progress and len(files) > batch_size  # a bar (tqdm, stderr) only when there is more than one batch
    logits, ok = model_logits(loaded.model, source, batch_size=batch_size, progress=long_run, desc="predict")
    skipped = {source.name(i): source.reason(i) or "unreadable" for i in (~ok).nonzero().flatten().tolist()}
    if skipped and not skip_bad:
        name, reason = next(iter(skipped.items()))
        more = f"one of {len(skipped)} unreadable images; " if len(skipped) > 1 else ""
        raise UsageError(f"{name}: {reason} ({more}--skip-bad skips unreadable images)")
    if not ok.any():
        raise UsageError(f"none of the {len(files)} images could be read: {_skipped_text(skipped)}")
    probs = logits.softmax(1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    results = [
        {
            "image": str(path),
            f"top{top_k}": [
                {"label": loaded.label_names[i], "probability": float(p)}
                for p, i in zip(values[row].tolist(), indices[row].tolist(), strict=True)
            ],
        }
        for row, path in enumerate(files)
        if ok[row]
    ]
    return Predictions(results, top_k, skipped)


def predict(
    images: Sequence[str | Path],
    model: str | LoadedModel,
    top_k: int = 5,
    device: str | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    skip_bad: bool = False,
) -> list[dict[str, Any]]:
    """``[{"image": path, "top<k>": [{"label", "probability"}, ...]}, ...]``, probabilities descending.

    ``images`` are files, folders and glob patterns (:func:`expand_images`). Probabilities are the softmax of the
    model's float32 logits, in [0, 1]; ``top_k`` is capped at the class count. ``device`` None or ``"auto"``: CUDA
    when available. With ``skip_bad`` unreadable images are left out of the result and named in a warning.
    ``progress`` shows a tqdm bar on stderr when there is more than one batch.

    Raises:
        UsageError: ``top_k < 1``, ``batch_size < 1``, no images, a folder without images, a pattern matching
            nothing, an unreadable image without ``skip_bad``, or no readable image at all.
    """
    found = run_predictions(images, model, top_k, device, batch_size=batch_size, progress=progress, skip_bad=skip_bad)
    if found.skipped:
        logger.warning("skipped %d unreadable image(s): %s", len(found.skipped), _skipped_text(found.skipped))
    return found.results


def _skipped_text(skipped: dict[str, str]) -> str:
    return format_skipped(f"{name} ({reason})" for name, reason in skipped.items())


def predictions_csv(results: Sequence[dict[str, Any]], top_k: int) -> str:
    """One row per image: ``image, label_1, probability_1, ..., label_k, probability_k`` (k = the labels each
    result holds: ``top_k`` capped at the class count), rank 1 the most probable; a header row first."""
    k = max((len(r[f"top{top_k}"]) for r in results), default=top_k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", *[f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "probability")]])
    for result in results:
        entries = result[f"top{top_k}"]
        writer.writerow([result["image"], *[v for e in entries for v in (e["label"], e["probability"])]])
    return buf.getvalue()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo predict`` to ``parser``."""
    from .evaluation import EVAL_BATCH_SIZE

    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, folders, or quoted glob patterns ('photos/**/*.jpg')"
    )
    parser.add_argument("--model", required=True, help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="how many labels per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON (an object, or a list for several images)")
    parser.add_argument(
        "--csv",
        metavar="FILE",
        help="write one row per image: image, label_1, probability_1, ..., label_k, probability_k",
    )
    parser.add_argument(
        "--batch-size", type=int, default=EVAL_BATCH_SIZE, metavar="N", help=f"images per batch ({EVAL_BATCH_SIZE})"
    )
    parser.add_argument("--device", default="auto", help="torch device; auto (default): cuda if available, else cpu")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (named on stderr) instead of stopping"
    )


def _check_csv_path(path: str | None) -> Path | None:
    from .onnx_export import check_parent_folder

    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--csv {out}: is a folder; give a file name")
    check_parent_folder("--csv", out)  # a missing folder is made by the atomic write, as export --out does
    return out


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo predict``: the top-k labels of each image as text or JSON on stdout and/or a CSV file;
    skipped images (``--skip-bad``) named in one line on stderr; returns 0."""
    from .atomic import atomic_write_text

    csv_path = _check_csv_path(args.csv)
    found = run_predictions(
        args.images, args.model, args.top_k, args.device, batch_size=args.batch_size,
        progress=True, skip_bad=args.skip_bad,
    )  # fmt: skip
    results = found.results
    if found.skipped:
        print(f"inat-zoo predict: skipped {len(found.skipped)} unreadable image(s): "
              f"{_skipped_text(found.skipped)}", file=sys.stderr)  # fmt: skip
    if csv_path is not None:
        atomic_write_text(csv_path, predictions_csv(results, args.top_k))
        print(f"wrote {len(results)} prediction(s) to {csv_path}", file=sys.stderr)
    if args.json:
        single = len(results) == 1 and len(args.images) == 1 and Path(args.images[0]).is_file()
        print(json.dumps(results[0] if single else results, indent=2))
    elif csv_path is None:
        key = f"top{args.top_k}"
        for result in results:
            print(result["image"])
            for entry in result[key]:
                print(f"  {entry['probability']:.4f}  {entry['label']}")
    return 0
