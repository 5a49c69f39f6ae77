"""ResNet50 training throughput on a CUDA GPU: synthetic GPU-resident data vs the real input pipeline, and MFU.

Four measurements at 224 px, bf16 autocast, channels_last, one optimizer step per batch:
  synthetic / eager, synthetic / torch.compile  (batches already on the GPU: the model's ceiling)
  pipeline / eager, pipeline / torch.compile    (photo-like 800x600 JPEGs through inat_zoo's data path)
MFU = images/s x 24.3 GFLOP (forward + backward of one 224 px image) / the GPU's dense bf16 peak. The ratio of
pipeline to synthetic throughput says how far the input pipeline holds the GPU back. Run through bench/gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

GFLOP_PER_TRAIN_IMAGE = 24.3
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def make_step(model, optimizer, loss_fn):
    import torch

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, batches, warmup: int, steps: int) -> float:
    """Images per second over ``steps`` steps after ``warmup`` (compilation happens in the warm-up)."""
    import torch

    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    torch.cuda.synchronize()
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        seen += x.shape[0]
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def synthetic_batches(batch_size: int, size: int):
    import torch

    x = torch.randn(batch_size, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device="cuda")
    while True:
        yield x, y


def pipeline_batches(loader):
    import torch

    while True:
        for batch in loader:
            x = batch["pixel_values"].cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, batch["label"].cuda(non_blocking=True)


def build_loader(root: Path, images: int, batch_size: int, size: int, workers: int):
    import timm

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_pipeline import write_folder

    from inat_zoo.data import create_image_loader, create_image_transform, load_inat12k
    from inat_zoo.data.transforms import resolve_data_config

    write_folder(root, images)
    data_config = resolve_data_config(timm.create_model("resnet50", pretrained=False), image_size=size)
    train = load_inat12k(root, val_fraction=0.1, seed=0)["train"]
    transform = create_image_transform(data_config, is_training=True)
    return create_image_loader(
        train,
        transform,
        data_config,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=True,
    )


def run(args: argparse.Namespace) -> dict:
    import timm
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device (this benchmark is for a GPU machine)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    device_name = torch.cuda.get_device_name()
    peak = peak_tflops(device_name)
    results = {"device": device_name, "batch_size": args.batch_size, "image_size": args.image_size}

    with tempfile.TemporaryDirectory() as tmp:
        loader = build_loader(Path(tmp), args.images, args.batch_size, args.image_size, args.workers)
        for compiled in (False, True):
            torch.manual_seed(0)
            model = timm.create_model("resnet50", pretrained=False, num_classes=10).cuda()
            model = model.to(memory_format=torch.channels_last).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            forward = torch.compile(model) if compiled else model
            step = make_step(forward, optimizer, torch.nn.CrossEntropyLoss())
            tag = "compile" if compiled else "eager"
            warmup = args.warmup + (5 if compiled else 0)
            for source, batches in (
                ("synthetic", synthetic_batches(args.batch_size, args.image_size)),
                ("pipeline", pipeline_batches(loader)),
            ):
                ips = time_steps(step, batches, warmup, args.steps)
                results[f"{source}_{tag}_images_per_s"] = round(ips, 1)
                if peak:
                    results[f"{source}_{tag}_mfu"] = round(ips * GFLOP_PER_TRAIN_IMAGE / (peak * 1e3), 4)
                print(f"{source:10} {tag:8} {ips:10.1f} img/s", file=sys.stderr, flush=True)
            del model, forward, optimizer
            torch.cuda.empty_cache()
    results["pipeline_vs_synthetic_eager"] = round(
        results["pipeline_eager_images_per_s"] / results["synthetic_eager_images_per_s"], 3
    )
    results["compile_speedup_synthetic"] = round(
        results["synthetic_compile_images_per_s"] / results["synthetic_eager_images_per_s"], 3
    )
    results["peak_bf16_tflops"] = peak
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=2048, help="JPEGs generated for the pipeline measurement")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
