"""Training input pipeline throughput: inat_zoo's data path vs a naive torchvision ImageFolder, same run.

Generates photo-like 800x600 / 600x800 JPEGs (smooth colour fields + sensor-like noise, quality 90, ~120 KB on
average; nature_12K's average is ~318 KB, where the entropy decode both pipelines must do weighs more and
``ratio_no_cache`` is lower) in a temporary folder, then measures images/s through a DataLoader (num_workers=0 for
all, so the figure is per-core work) of:

- baseline: torchvision's PIL image loader (full decode, as ``ImageFolder``) + the timm train transform;
- no_cache: ``load_inat12k`` + ``create_image_loader(shuffle=True, seed=...)`` (what the trainer uses: per-sample
  augmentation seeds, see ``inat_zoo/data/seeding.py``) + the same transform, its random
  resized crop fused with decoding (crop drawn on the header size, JPEG decoded by libjpeg-turbo straight to numpy
  at the smallest DCT scale that still covers the output: with the optional C extension only the crop rectangle is
  reconstructed, without it whole rows down to the crop's bottom; torch's uint8 antialiased resize) and its
  ToTensor/Normalize run in the collate, straight into the batch (``jpeg_decoder`` in the output says which);
- cached:   ``prepare_dataset`` (one-time resized copy in the Arrow cache, not timed per epoch) + the same.

A fourth figure, ``decode_only``, times only the fused crop's JPEG decode (the same decoder, no resize, no
tensors): the ceiling of the no_cache pipeline (libjpeg-turbo must entropy-decode every row down to the crop's
bottom, at any scale, whatever it reconstructs).

Timing: ``--rounds`` seeded draw sets (random crops and flips), each run ``--repeats`` times by every pipeline in
turn with the same draws: a draw set is an epoch of the trainer's seeded sampler, and the baseline reseeds the
global RNGs with the same per-sample seed before each image, so every pipeline crops each photo the same way
(``pixel_diff_vs_baseline`` in the output checks it on a few images). A pipeline's time for a draw set is its best
repeat (machine noise only ever slows a pass down), and its throughput is all images over the sum of those times:
the mean over every draw, as an epoch sees them, not the luckiest set of crops.
``--json`` prints one object with ``ratio_no_cache`` and ``ratio_cached``. Targets: >= 2.5x and >= 5x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

N_CLASSES = 10


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth low-frequency colour field with mid-frequency texture and pixel noise: JPEG sizes of real photos."""
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    texture = Image.fromarray((rng.random((height // 8, width // 8)) * 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR
    )
    pixels = np.asarray(coarse, np.float32) * 0.8 + np.asarray(texture, np.float32)[..., None] * 0.2
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(root: Path, images: int, seed: int = 0) -> int:
    """``root/train/<class>/*.jpg`` with ``images`` photos and a tiny ``root/val``; returns total JPEG bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for split, count in (("train", images), ("val", N_CLASSES)):
        for i in range(count):
            folder = root / split / f"class_{i % N_CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            size = (800, 600) if i % 3 else (600, 800)
            path = folder / f"{rng.bytes(16).hex()}.jpg"
            photo_like(rng, *size).save(path, quality=90)
            total += path.stat().st_size
    return total


class SeededBaseline:
    """The naive pipeline: torchvision's PIL loader (full decode, as ``ImageFolder``) + the transform, over the
    training split's files in the split's order. Image ``index`` in epoch ``e`` is transformed under the same
    per-sample seed as the trainer's loader gives that row: the same crops and flips as ours, identical work."""

    def __init__(self, split, transform, seed: int) -> None:
        from inat_zoo.data.transforms import undecoded_images

        self.paths = [value["path"] for value in undecoded_images(split)["image"]]
        self.labels = list(split["label"])
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        from torchvision.datasets.folder import default_loader

        from inat_zoo.data.seeding import reseed_global_rngs, sample_seed

        reseed_global_rngs(sample_seed(self.seed, key.epoch, key.index))
        return self.transform(default_loader(self.paths[key.index])), self.labels[key.index]


def set_draw_set(loaders: dict, draw_set: int) -> None:
    """Every pipeline reads draw set ``draw_set`` as epoch ``draw_set`` of its seeded sampler."""
    for loader in loaders.values():
        if loader is not None:
            loader.sampler.set_epoch(draw_set)


def seconds_for(loader, limit: int) -> float:
    """Seconds to draw ``limit`` images (one pass over the data) from ``loader``."""
    seen, start = 0, time.perf_counter()
    for batch in loader:
        pixels = batch[0] if isinstance(batch, (list, tuple)) else batch["pixel_values"]
        seen += pixels.shape[0]
        if seen >= limit:
            break
    return time.perf_counter() - start


def pixel_diff_vs_baseline(baseline, loader, count: int = 8) -> float:
    """Largest mean absolute difference (normalised units) between the baseline's and ``loader``'s version of the
    first ``count`` photos in draw set 0: a few hundredths when both cropped alike (PIL's resize vs torch's), ~1 when
    the crops differ."""
    from inat_zoo.data.seeding import SampleKey

    worst = 0.0
    for index in range(count):
        theirs, _label = baseline[SampleKey(0, index)]
        ours = loader.collate_fn(loader.dataset.__getitems__([SampleKey(0, index)]))["pixel_values"][0]
        worst = max(worst, (ours - theirs).abs().mean().item())
    return worst


def decode_seconds(crop, values: list) -> float:
    """The decode ceiling: only the fused crop's decode (crop drawn, JPEG decoded at the scale it allows), no resize,
    no tensors. No pipeline that decodes the same JPEGs at the same scales can beat it."""
    start = time.perf_counter()
    for value in values:
        crop.decode_region(value)
    return time.perf_counter() - start


def run(images: int, size: int, rounds: int, repeats: int, batch_size: int, augment: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="inat_zoo_bench_") as tmp:
        tmp = Path(tmp)
        # Never reuse or pollute the user's caches: set before datasets is imported (it reads them at import).
        os.environ["INAT_ZOO_CACHE"] = str(tmp / "cache")
        os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_datasets")
        import datasets
        import timm
        import torch

        from inat_zoo.data import create_image_loader, create_image_transform, load_inat12k, prepare_dataset
        from inat_zoo.data.crop_decode import JPEG_DECODER, FusedRandomResizedCrop
        from inat_zoo.data.prepare import short_side_for
        from inat_zoo.data.seeding import EpochSampler, reseed_global_rngs
        from inat_zoo.data.transforms import resolve_data_config

        torch.set_num_threads(1)
        datasets.disable_progress_bars()
        if Path(datasets.config.HF_DATASETS_CACHE) != tmp / "hf_datasets":  # imported earlier by the caller
            datasets.config.HF_DATASETS_CACHE = tmp / "hf_datasets"
        t0 = time.perf_counter()
        jpeg_bytes = write_folder(tmp / "data", images)
        generate_s = time.perf_counter() - t0

        model = timm.create_model("resnet50", pretrained=False)
        data_config = resolve_data_config(model, size)
        transform = create_image_transform(data_config, is_training=True, augment=augment)

        dsdict = load_inat12k(tmp / "data", val_fraction=0.1, seed=0)
        t0 = time.perf_counter()
        prepared = prepare_dataset(dsdict, short_side_for(size), num_proc=1)
        prepare_s = time.perf_counter() - t0

        seeded = {"batch_size": batch_size, "shuffle": True, "seed": 0}  # as the trainer reads its training split
        pipelines = {
            "no_cache": create_image_loader(dsdict["train"], transform, data_config, **seeded),
            "cached": create_image_loader(prepared["train"], transform, data_config, **seeded),
        }
        baseline = SeededBaseline(dsdict["train"], transform, seed=0)
        pipelines["baseline"] = torch.utils.data.DataLoader(
            baseline, batch_size=batch_size, sampler=EpochSampler(len(baseline), 0), num_workers=0
        )
        pixel_diff = pixel_diff_vs_baseline(baseline, pipelines["no_cache"])
        limit = len(dsdict["train"])
        crop = FusedRandomResizedCrop.from_step(transform.transforms[0])
        undecoded = list(dsdict["train"].cast_column("image", datasets.Image(decode=False))["image"])
        timed = {**pipelines, "decode_only": None}
        seconds = dict.fromkeys(timed, 0.0)
        for draw_set in range(rounds):
            best = dict.fromkeys(timed, float("inf"))
            for _ in range(repeats):
                for name, loader in timed.items():
                    set_draw_set(pipelines, draw_set)
                    reseed_global_rngs(draw_set)  # decode_only draws its crops from the global RNGs
                    took = decode_seconds(crop, undecoded) if loader is None else seconds_for(loader, limit)
                    best[name] = min(best[name], took)
            for name in timed:
                seconds[name] += best[name]
        rate = {name: limit * rounds / seconds[name] for name in timed}
    return {
        "images": limit,
        "image_size": size,
        "rounds": rounds,
        "repeats": repeats,
        "mean_jpeg_kb": round(jpeg_bytes / (images + N_CLASSES) / 1024, 1),
        "baseline_images_per_s": round(rate["baseline"], 1),
        "no_cache_images_per_s": round(rate["no_cache"], 1),
        "cached_images_per_s": round(rate["cached"], 1),
        "ratio_no_cache": round(rate["no_cache"] / rate["baseline"], 2),
        "ratio_cached": round(rate["cached"] / rate["baseline"], 2),
        "decode_only_images_per_s": round(rate["decode_only"], 1),
        "ratio_decode_only": round(rate["decode_only"] / rate["baseline"], 2),
        "jpeg_decoder": JPEG_DECODER,
        "pixel_diff_vs_baseline": round(pixel_diff, 4),
        "prepare_s": round(prepare_s, 1),
        "generate_s": round(generate_s, 1),
        "augment": augment or {},
        "transform": str(transform).replace("\n", " "),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--images", type=int, default=240, help="training images to generate (default 240)")
    parser.add_argument("--size", type=int, default=224, help="training image size (default 224)")
    parser.add_argument("--rounds", type=int, default=5, help="seeded sets of random crops and flips (default 5)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per draw set, best kept (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--augment", type=json.loads, default=None, help="""recipe data.augment as JSON, e.g. '{"re_prob": 0.25}'"""
    )
    args = parser.parse_args(argv)
    result = run(args.images, args.size, args.rounds, args.repeats, args.batch_size, args.augment)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['images']} photo-like JPEGs (mean {result['mean_jpeg_kb']} KB), train transform at {args.size} px")
    print(f"{'pipeline':<10} {'images/s':>10} {'vs baseline':>12}  target")
    print(f"{'baseline':<10} {result['baseline_images_per_s']:>10.1f} {'1.00x':>12}")
    print(f"{'no_cache':<10} {result['no_cache_images_per_s']:>10.1f} {result['ratio_no_cache']:>11.2f}x  >= 2.5x")
    print(f"{'cached':<10} {result['cached_images_per_s']:>10.1f} {result['ratio_cached']:>11.2f}x  >= 5x")
    print(
        f"{'(decode)':<10} {result['decode_only_images_per_s']:>10.1f} {result['ratio_decode_only']:>11.2f}x"
        "  ceiling for no_cache: the JPEG decode alone"
    )
    print(f"JPEG decoder: {result['jpeg_decoder']}")
    print(f"one-time prepare: {result['prepare_s']} s; generating the images: {result['generate_s']} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
