"""Tiny run directories for the evaluation, explanation and prediction tests.

A run is built the way the trainer writes one (``inat_zoo.export.save_model_folder`` + recipe.yaml), after a few
real optimisation steps on the synthetic sample so that predictions are neither constant nor all right. Runs are
memoised per (sample root, spec), so every test module shares them within a session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from PIL import Image

import inat_zoo  # noqa: F401  (registers inat_* models)
from inat_zoo.export import save_model_folder

IMG = 64
_RUNS: dict[tuple, Path] = {}


def class_names(sample_root: Path) -> list[str]:
    return sorted(p.name for p in (sample_root / "train").iterdir() if p.is_dir())


def image_files(sample_root: Path, folder: str) -> list[tuple[Path, int]]:
    names = class_names(sample_root)
    return [(f, i) for i, name in enumerate(names) for f in sorted((sample_root / folder / name).glob("*.jpg"))]


def timm_eval_transform(data_config: dict):
    """timm's own evaluation transform: the independent reference for our pipeline."""
    return timm.data.create_transform(**data_config, is_training=False)


def load_pil(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def make_run(
    base: Path, sample_root: Path, model_name: str = "inat_flexible_cnn", steps: int = 30, **model_args
) -> Path:
    """A run directory (model/ + recipe.yaml + metrics.json) whose data.root is ``sample_root``."""
    key = (str(sample_root), model_name, steps, repr(sorted(model_args.items())))
    if key not in _RUNS:
        run = base / f"run_{model_name}_{len(_RUNS)}"
        _RUNS[key] = _train_and_save(run, sample_root, model_name, steps, model_args)
    return _RUNS[key]


def _train_and_save(run: Path, sample_root: Path, model_name: str, steps: int, model_args: dict) -> Path:
    torch.manual_seed(0)
    names = class_names(sample_root)
    model = timm.create_model(model_name, num_classes=len(names), pretrained=False, **model_args)
    data_config = color_data_config(IMG, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    transform = timm_eval_transform(data_config)
    files = image_files(sample_root, "train")
    x = torch.stack([transform(load_pil(f)) for f, _ in files])
    y = torch.tensor([label for _, label in files])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):  # a few real steps: predictions are neither constant nor perfect
        idx = torch.randperm(len(y), generator=gen)[:32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_model_folder(model, run / "model", label_names=names, data_config=data_config)
    recipe = {
        "seed": 42,
        "output_dir": str(run),
        "model": {"name": model_name, "args": model_args, "pretrained": False, "freeze": "none"},
        "data": {"root": str(sample_root), "val_fraction": 0.2, "image_size": IMG},
        "track": {"wandb": False, "project": "inat_zoo", "mode": "offline"},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


def pixel_std(png: Path) -> float:
    """Standard deviation of a PNG's pixels: 0 for a blank picture."""
    with Image.open(png) as img:
        return float(np.asarray(img.convert("RGB"), dtype=np.float32).std())


# ------------------------------------------------------------------------------ a model whose answers are known
COLORS = {"a_red": (220, 20, 20), "b_green": (20, 220, 20), "c_blue": (20, 20, 220)}  # class i = colour channel i


class ColorModel(torch.nn.Module):
    """Predicts the dominant colour channel of the image: perfect on solid red/green/blue pictures.

    ``forward_features``/``forward_head`` and a conv "stages.0" make it explainable like a timm CNN.
    """

    def __init__(self):
        super().__init__()
        self.stages = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1, bias=False))
        with torch.no_grad():
            self.stages[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stages(x)).mean((2, 3)) * 10


def color_data_config(size: int = 32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> dict:
    """A timm data config: ``size`` px, bilinear, no crop margin; identity normalisation unless given."""
    return {
        "input_size": (3, size, size),
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def write_color_folder(root: Path, test_classes=tuple(COLORS), per_class: int = 5, size: int = 40) -> Path:
    """train/ with every colour class, val/ (the test split) with ``test_classes`` only; solid-colour PNGs."""
    rng = np.random.default_rng(0)
    for split, classes in (("train", COLORS), ("val", test_classes)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                noise = rng.integers(0, 20, (size, size, 3))
                pixels = np.clip(np.array(COLORS[name]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def color_model(run_dir: Path | None = None):
    """The perfect colour model as a LoadedModel (what load_model returns)."""
    from inat_zoo.loading import LoadedModel

    return LoadedModel(ColorModel().eval(), color_data_config(), list(COLORS), run_dir, "color-model")


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A PNG header claiming ``side`` x ``side`` pixels: over Pillow's decompression-bomb limit, a few bytes long."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def unreadable_files(folder: Path) -> dict[str, Path]:
    """One file per way an image can be unreadable (the decompression bomb included)."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture")
    return {
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "not an image": folder / "text.jpg",
        "decompression bomb": png_bomb(folder / "bomb.png"),
    }
