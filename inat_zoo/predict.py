"""Top-k labels for image files (or folders of them) with any MODEL, through the one evaluation rule.

Images are decoded and preprocessed exactly as ``inat-zoo evaluate`` and training's final test pass do
(:func:`inat_zoo.evaluation.model_logits`: full-resolution decode with EXIF orientation, the model's timm evaluation
transform, float32, the same batches), so a test image gets the same prediction here as in the evaluation.

An image named on the command line that cannot be read stops the command with ``inat-zoo: error: <file>: <reason>``
(exit 2) before the model is loaded; an image met inside a named folder that cannot be read is skipped and named in
a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.decode import format_skipped, image_files_in, read_image_file
from .errors import UsageError
from .loading import LoadedModel, load_model

logger = logging.getLogger(__name__)


def read_image(path: str | Path):
    """An image named by the user, decoded by the one rule; any failure is ``UsageError("<file>: <reason>")``."""
    return read_image_file(path)


def collect_images(arguments: Sequence[str | Path]) -> list[Path]:
    """Files as given (each must be readable: checked now, a UsageError otherwise) and the image files inside folders
    (read later; the unreadable ones are skipped)."""
    files: list[Path] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            inside = image_files_in(path)
            if not inside:
                raise UsageError(f"{path}: folder holds no image files")
            files += inside
        else:
            read_image_file(path)  # named on the command line: must be readable
            files.append(path)
    return files


def predict(
    images: Sequence[str | Path],
    model: str | LoadedModel,
    top_k: int = 5,
    device: str | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``[{"image": path, "top<k>": [{"label", "probability"}, ...]}, ...]``, probabilities descending.

    ``images`` are files or folders; unreadable files inside folders are left out of the result (and warned about).
    Probabilities are the softmax of the model's float32 logits, in [0, 1]; ``top_k`` is capped at the class count.

    Raises:
        UsageError: ``top_k < 1``, no images, an unreadable file named directly, or no readable image at all.
    """
    from .evaluation import EVAL_BATCH_SIZE, EvalImages, default_device, model_logits

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if not images:
        raise UsageError("no IMAGE given")
    files = collect_images(images)  # every named file checked before the model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device or default_device())
    source = EvalImages([str(f) for f in files], loaded.data_config, split="images")
    logits, ok = model_logits(
        loaded.model, source, batch_size=batch_size or EVAL_BATCH_SIZE, progress=progress, desc="predict"
    )
    skipped = [f"{source.name(i)} ({source.reason(i)})" for i in (~ok).nonzero().flatten().tolist()]
    if skipped:
        logger.warning("skipped %d unreadable image(s): %s", len(skipped), format_skipped(skipped))
    if not ok.any():
        raise UsageError("none of the images could be read")
    probs = logits.softmax(1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo predict`` to ``parser``."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument("--model", required=True, help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="how many labels per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON (an object, or a list for several images)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo predict`` and print the top-k labels of each image (text or JSON); returns 0."""
    results = predict(args.images, args.model, args.top_k, args.device)
    if args.json:
        single = len(results) == 1 and len(args.images) == 1 and not Path(args.images[0]).is_dir()
        print(json.dumps(results[0] if single else results, indent=2))
        return 0
    key = f"top{args.top_k}"
    for result in results:
        print(result["image"])
        for entry in result[key]:
            print(f"  {entry['probability']:.4f}  {entry['label']}")
    return 0
