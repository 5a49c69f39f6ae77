"""Parameter and multiply-accumulate counts of FlexibleCNN: the assignment's closed form, and measured.

The assignment's first question: with m filters of size k x k in every block, n dense neurons, an H x W RGB input
and 10 classes (flattened head, no batch norm, "same" convolutions, five 2x2 poolings):

    params = m(3k^2 + 1) + 4m(mk^2 + 1) + n(m*HW/1024 + 1) + 10(n + 1)
    MACs   = HW*m*k^2*(3 + 85m/256) + m*HW*n/1024 + 10n

The measured counts come from the instantiated timm model: parameters summed, MACs from torch's FLOP counter
(FLOPs / 2; biases, activations and pooling are not counted, as in the formula).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

NUM_CLASSES = 10


@dataclass(frozen=True)
class Complexity:
    """Parameter and MAC (multiply-accumulate) counts: the closed form, and the measured model's if it was built."""

    params: int
    macs: int
    params_measured: int | None = None
    macs_measured: int | None = None


def closed_form_params(m: int, k: int, n: int, h: int, w: int, num_classes: int = NUM_CLASSES) -> int:
    # integer form of m*HW/1024: the 7x7 (H/32 x W/32) map of m channels feeds the dense layer
    """The assignment's parameter count for ``m`` filters of ``k x k``, ``n`` dense neurons and an ``h x w`` RGB input.

    Flattened head, no batch norm; ``h`` and ``w`` in pixels (divisible by 32). See the module docstring's formula.
    """
    flat = m * (h // 32) * (w // 32)
    return m * (3 * k * k + 1) + 4 * m * (m * k * k + 1) + n * (flat + 1) + num_classes * (n + 1)


def closed_form_macs(m: int, k: int, n: int, h: int, w: int, num_classes: int = NUM_CLASSES) -> int:
    # conv i runs on an (H/2^i) x (W/2^i) map: HW*m*k^2 * (3 + m/4 + m/16 + m/64 + m/256), summed exactly
    """The assignment's multiply-accumulates of one forward pass of one ``h x w`` image (pixels), summed exactly.

    Convolutions and the two Linear layers only (no biases, activations or pooling), as torch's FLOP counter / 2.
    """
    hw = [(h >> i) * (w >> i) for i in range(5)]
    conv = hw[0] * m * 3 * k * k + sum(hw[i] * m * m * k * k for i in range(1, 5))
    flat = m * (h // 32) * (w // 32)
    return conv + flat * n + num_classes * n


def build_model(m: int, k: int, n: int, h: int, w: int, num_classes: int = NUM_CLASSES):
    """The model the closed form describes: timm's inat_flexible_cnn with a flattened head and no batch norm."""
    import timm

    import inat_zoo  # noqa: F401  (registers inat_flexible_cnn)

    return timm.create_model(
        "inat_flexible_cnn",
        filters=m,
        filter_org="same",
        kernel_size=k,
        dense_size=n,
        batch_norm=False,
        global_pool="flatten",
        img_size=(h, w),
        num_classes=num_classes,
    )


def measure(model, h: int, w: int, in_chans: int = 3) -> tuple[int, int]:
    """(parameters, MACs) of one forward pass of ``model`` on one ``(1, in_chans, h, w)`` float32 zero image (pixels).

    MACs are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2, so only matmuls and convolutions count. The
    model is put in eval mode (and left there); the input is created on the CPU.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_chans, h, w))
    return params, counter.get_total_flops() // 2


def count(
    filters: int,
    kernel_size: int,
    dense_size: int,
    image_size: int | tuple[int, int] = 224,
    num_classes: int = NUM_CLASSES,
    measured: bool = True,
) -> Complexity:
    """Closed-form counts, and (``measured=True``) the counts of the instantiated model next to them.

    ``image_size`` is H (square) or (H, W) in pixels. Raises ValueError unless both are multiples of 32 (and at
    least 32).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h % 32 or w % 32 or h < 32 or w < 32:
        raise ValueError(f"image size must be divisible by 32 (five 2x2 poolings), got {h}x{w}")
    m, k, n = filters, kernel_size, dense_size
    result = Complexity(closed_form_params(m, k, n, h, w, num_classes), closed_form_macs(m, k, n, h, w, num_classes))
    if not measured:
        return result
    params, macs = measure(build_model(m, k, n, h, w, num_classes), h, w)
    return Complexity(result.params, result.macs, params, macs)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo complexity`` to ``parser``."""
    parser.add_argument("--filters", "-m", type=int, default=32, help="filters per conv block (m)")
    parser.add_argument("--kernel-size", "-k", type=int, default=3, help="kernel size k (k x k)")
    parser.add_argument("--dense", "-n", type=int, default=256, help="dense layer neurons (n)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224], metavar="H [W]", help="input size")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES)
    parser.add_argument("--no-measure", action="store_true", help="closed form only, do not build the model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo complexity``: print the closed-form (and measured) counts; returns 0.

    Raises:
        UsageError: a bad ``--image-size``, a non-positive or even size option.
    """
    from .errors import UsageError

    sizes = args.image_size
    if len(sizes) > 2:
        raise UsageError(f"--image-size takes H or H W, got {len(sizes)} values")
    image_size = (sizes[0], sizes[-1])
    for name, value in (("--filters", args.filters), ("--kernel-size", args.kernel_size), ("--dense", args.dense)):
        if value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value}")
    if args.kernel_size % 2 == 0:
        raise UsageError(f"--kernel-size must be odd (same padding), got {args.kernel_size}")
    try:
        result = count(args.filters, args.kernel_size, args.dense, image_size, args.num_classes, not args.no_measure)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    h, w = image_size
    print(f"FlexibleCNN, m={args.filters} filters of {args.kernel_size}x{args.kernel_size}, n={args.dense}, {h}x{w}")
    print(f"{'':12}{'closed form':>16}{'measured':>16}")
    for label, closed, meas in (
        ("parameters", result.params, result.params_measured),
        ("MACs", result.macs, result.macs_measured),
    ):
        print(f"{label:12}{closed:>16,}{(f'{meas:,}' if meas is not None else '-'):>16}")
    return 0
