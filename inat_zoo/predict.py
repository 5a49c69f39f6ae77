"""Top-k labels for image files with any MODEL, preprocessed by the model's own timm data config."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .errors import UsageError
from .loading import LoadedModel, load_model


def read_image(path: str | Path) -> Image.Image:
    """An upright RGB image (the data layer's decoder: EXIF orientation, any mode); bad files are UsageErrors."""
    from .data.transforms import decode_image

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such image: {path}")
    try:
        return decode_image(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{path} is not a readable image ({type(e).__name__}: {e})") from e


def predict(
    images: Sequence[str | Path], model: str | LoadedModel, top_k: int = 5, device: str = "cpu"
) -> list[dict[str, Any]]:
    """``[{"image": path, "top<k>": [{"label", "probability"}, ...]}, ...]``, probabilities descending."""
    from .data import create_image_transform

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if not images:
        raise UsageError("no IMAGE given")
    pictures = [read_image(p) for p in images]  # every file checked before the model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device)
    transform = create_image_transform(loaded.data_config, is_training=False)
    dev = next(loaded.model.parameters()).device
    x = torch.stack([transform(p) for p in pictures]).to(dev)
    with torch.inference_mode():
        probs = loaded.model(x).float().softmax(1).cpu()
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        {
            "image": str(path),
            f"top{top_k}": [
                {"label": loaded.label_names[i], "probability": float(p)}
                for p, i in zip(values[row].tolist(), indices[row].tolist(), strict=True)
            ],
        }
        for row, path in enumerate(images)
    ]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True, help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="how many labels per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON (an object, or a list for several images)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run_cli(args: argparse.Namespace) -> int:
    results = predict(args.images, args.model, args.top_k, args.device)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    key = f"top{args.top_k}"
    for result in results:
        print(result["image"])
        for entry in result[key]:
            print(f"  {entry['probability']:.4f}  {entry['label']}")
    return 0
