"""Trainer overhead: step time of inat_zoo's training loop vs a bare PyTorch loop on the same model and batches.

Both loops train the same architecture (same initial weights, same timm optimizer) on the same pre-decoded batches
held in memory, so data loading is out of the picture and the ratio is what the trainer adds per step (accelerate
wrapping, gradient-accumulation context, scheduler step, EMA/metric bookkeeping). Epochs alternate between the two
(interleaved) and the median epoch is compared. Target: ``overhead_ratio`` <= 1.05.

    python bench/trainer_overhead.py [--json] [--rounds 5] [--steps 20] [--image-size 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5, help="epochs of each loop (interleaved)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="inat_flexible_cnn")
    parser.add_argument("--model-args", default='{"filters": 16}', help="JSON kwargs for timm.create_model")
    args = parser.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    from accelerate.utils import set_seed
    from timm.optim import create_optimizer_v2
    from torch.utils.data import DataLoader, TensorDataset

    from inat_zoo.config import typed_recipe
    from inat_zoo.data.sample import write_sample
    from inat_zoo.train import _Trainer

    with tempfile.TemporaryDirectory(prefix="trainer_overhead_") as tmp:
        root = write_sample(Path(tmp) / "sample", train_per_class=6, test_per_class=2, min_side=40, max_side=48)
        recipe = typed_recipe(
            {
                "output_dir": str(Path(tmp) / "run"),
                "model": {"name": args.model, "args": json.loads(args.model_args)},
                "data": {"root": str(root), "image_size": args.image_size, "num_workers": 0},
                "train": {"epochs": 1000, "batch_size": args.batch_size, "lr": 1e-3},
            }
        )
        trainer = _Trainer(recipe, None, None)
        acc = trainer.accelerator
        n = args.steps * args.batch_size
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(n, 3, args.image_size, args.image_size, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        trainer.train_loader = acc.prepare_data_loader(
            DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True)
        )

        # the bare loop: the same architecture and initial weights, the same timm optimizer, plain PyTorch
        bare = copy.deepcopy(trainer.core).to(acc.device).train()
        set_seed(0)
        bare_opt = create_optimizer_v2(bare, opt="adamw", lr=1e-3, weight_decay=0.05)
        criterion = torch.nn.CrossEntropyLoss()
        bare_loader = DataLoader(
            TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True
        )

        def run_bare() -> float:
            start = time.perf_counter()
            for x, y in bare_loader:
                loss = criterion(bare(x), y)
                loss.backward()
                bare_opt.step()
                bare_opt.zero_grad(set_to_none=True)
            loss.item()  # the trainer syncs once per epoch too (metrics)
            return (time.perf_counter() - start) / args.steps

        def run_ours(epoch: int) -> float:
            trainer.state.batches_done = 0
            trainer.state.train_sums = [0.0, 0.0, 0.0]
            start = time.perf_counter()
            trainer.train_epoch(epoch)
            return (time.perf_counter() - start) / args.steps

        run_bare(), run_ours(1)  # warm-up: allocator, first-call costs
        ours, base = [], []
        for r in range(args.rounds):
            if r % 2:
                base.append(run_bare())
                ours.append(run_ours(r + 2))
            else:
                ours.append(run_ours(r + 2))
                base.append(run_bare())
        acc.end_training()

    result = {
        "benchmark": "trainer_overhead",
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps,
        "rounds": args.rounds,
        "trainer_step_s": statistics.median(ours),
        "bare_step_s": statistics.median(base),
        "overhead_ratio": statistics.median(ours) / statistics.median(base),
        "target": 1.05,
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'loop':<12}{'median step (ms)':>18}")
        print(f"{'bare torch':<12}{result['bare_step_s'] * 1e3:>18.2f}")
        print(f"{'inat_zoo':<12}{result['trainer_step_s'] * 1e3:>18.2f}")
        print(f"overhead_ratio {result['overhead_ratio']:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
