"""What freezing buys: head-only training on cached features, and resnet50 until:layer3 vs full fine-tuning.

Two measurements, each against its baseline in the same run, interleaved (baseline, candidate, baseline, ...) so
machine noise hits both alike; every figure keeps the best (minimum) time of its repeats.

1. ``head_cached_vs_naive``: epoch time of ``freeze: head`` training. Naive = the whole frozen network runs forward
   every epoch (the backward only reaches the classifier). Cached = the backbone runs once
   (:func:`inat_zoo.feature_cache.extract_features`), then every epoch trains :class:`HeadOnly` on the stored
   features. Compared from the second epoch (the first cached epoch pays the extraction, reported separately, with
   the total over all epochs). Target >= 20x.
2. ``until_layer3_vs_full``: optimizer step time (forward, backward, AdamW step) of ``until:layer3`` (layer4 + fc
   train; no autograd state in the frozen prefix) vs full fine-tuning, at 224 px. Target >= 1.8x.

Images are random tensors already in memory: decoding is left out, which makes the naive head path look cheaper
than it is in real training (a conservative ratio). ``--json`` prints one JSON object with both ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import inat_zoo  # noqa: F401  (registers the inat_* models, so --model inat_flexible_cnn works)
from inat_zoo.feature_cache import HeadOnly, extract_features
from inat_zoo.freeze import apply_freeze, trainable_parameters

TARGETS = {"head_cached_vs_naive": 20.0, "until_layer3_vs_full": 1.8}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=1e-4, weight_decay=0.05)


def _epoch(forward, optimizer, loader, device) -> float:
    """One training epoch over ``loader`` through ``forward``; returns its wall time."""
    _sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def bench_head(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.head_images, 3, args.image_size, args.image_size, generator=gen)
    labels = torch.randint(0, 10, (args.head_images,), generator=gen)
    model = timm.create_model(args.model, pretrained=False, num_classes=10)
    model = apply_freeze(model, "head").to(device)
    naive, cached = model, copy.deepcopy(model)

    image_loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, generator=gen)
    naive_opt, cached_opt = _optimizer(naive), _optimizer(cached)
    naive.train()

    _sync(device)
    start = time.perf_counter()
    feats, feat_labels = extract_features(
        cached, DataLoader(TensorDataset(images, labels), args.batch_size), None, progress=False
    )
    _sync(device)
    extraction_s = time.perf_counter() - start
    head = HeadOnly(cached).train()
    feat_loader = DataLoader(
        TensorDataset(feats, feat_labels), batch_size=args.batch_size, shuffle=True, generator=gen
    )

    naive_times, cached_times = [], []
    for _ in range(args.epochs):  # interleaved: naive epoch, cached epoch, ...
        naive_times.append(_epoch(naive, naive_opt, image_loader, device))
        # a cached epoch takes milliseconds, where scheduler noise dominates: keep the best of a few repeats
        cached_times.append(min(_epoch(head, cached_opt, feat_loader, device) for _ in range(args.cached_repeats)))
    naive_epoch, cached_epoch = min(naive_times[1:]), min(cached_times[1:])
    return {
        "head_cached_vs_naive": naive_epoch / cached_epoch,
        "head_cached_vs_naive_total": sum(naive_times) / (extraction_s + sum(cached_times)),
        "naive_epoch_s": naive_epoch,
        "cached_epoch_s": cached_epoch,
        "extraction_s": extraction_s,
        "head_images": args.head_images,
        "epochs": args.epochs,
        "feature_dim": int(feats.shape[1]),
    }


def bench_until(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    full = timm.create_model(args.model, pretrained=False, num_classes=10).to(device)
    frozen = apply_freeze(copy.deepcopy(full), f"until:{args.stage}")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    batch = [(x, y)]
    runs = {"full": (full.train(), _optimizer(full), []), "frozen": (frozen.train(), _optimizer(frozen), [])}
    for step in range(args.steps + 1):  # step 0 warms up both (allocator, kernels); interleaved afterwards
        for model, opt, times in runs.values():
            t = _epoch(model, opt, batch, device)
            if step:
                times.append(t)
    full_s, frozen_s = min(runs["full"][2]), min(runs["frozen"][2])
    return {
        "until_layer3_vs_full": full_s / frozen_s,
        "full_step_s": full_s,
        "until_step_s": frozen_s,
        "trainable_params_full": sum(p.numel() for p in trainable_parameters(full)),
        "trainable_params_until": sum(p.numel() for p in trainable_parameters(frozen)),
        "steps": args.steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", default="resnet50", help="timm model name (random init)")
    parser.add_argument("--stage", default="layer3", help="stage for the until:<stage> comparison")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant for until vs full")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per path for head-only (>= 2)")
    parser.add_argument("--head-images", type=int, default=12, help="images per head-only epoch")
    parser.add_argument("--cached-repeats", type=int, default=5, help="repeats of each (cheap) cached epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.steps < 1 or args.cached_repeats < 1:
        parser.error("--epochs must be >= 2 (compared from the second epoch), --steps and --cached-repeats >= 1")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    result = {
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **bench_head(args, device),
        **bench_until(args, device),
        "targets": TARGETS,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.model} at {args.image_size} px, batch {args.batch_size}, {device}, {result['torch_threads']} threads"
    )
    print(f"{'measurement':<34}{'baseline':>12}{'candidate':>12}{'ratio':>10}{'target':>9}")
    print(
        f"{'head: naive vs cached epoch':<34}{result['naive_epoch_s']:>11.3f}s{result['cached_epoch_s']:>11.4f}s"
        f"{result['head_cached_vs_naive']:>9.1f}x{TARGETS['head_cached_vs_naive']:>8.1f}x"
    )
    print(
        f"{'  (all epochs incl. extraction)':<34}{'':>12}{'':>12}{result['head_cached_vs_naive_total']:>9.1f}x"
        f"   extraction {result['extraction_s']:.3f}s"
    )
    print(
        f"{'step: full vs until:' + args.stage:<34}{result['full_step_s']:>11.3f}s{result['until_step_s']:>11.3f}s"
        f"{result['until_layer3_vs_full']:>9.2f}x{TARGETS['until_layer3_vs_full']:>8.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
