"""``inat-zoo lr-find RECIPE [key=value ...] --out DIR``: the learning-rate range test of a recipe.

The test of Smith 2017 ("Cyclical Learning Rates for Training Neural Networks", WACV, section 3.3), in fastai's
form (``Learner.lr_find``): train the recipe's model (its freeze strategy, optimizer, loss, data and augmentation,
built by the trainer's own factories) for ``num_iter`` mini-batches while the learning rate grows exponentially from
``start_lr`` to ``end_lr``, the train loader repeated as needed; record the loss smoothed by an exponential moving
average (beta 0.98, bias-corrected, as fastai); stop early once the smoothed loss exceeds 4x the best so far
(diverged) or is not finite.

Suggestion rule, ``steep``: the learning rate where the smoothed loss falls fastest, i.e. the minimum of its
derivative over log(lr) (``numpy.gradient``), after dropping the first tenth of the points and the last five
(fastai's trimming), at least three points left: fastai's ``SuggestionMethod.Steep`` and torch-lr-finder's
suggestion (which we do not depend on: its loaders expect ``(inputs, labels)`` tuples, ours give dicts, and its
smoothing is not bias-corrected).

Writes ``DIR/lr_find.png`` (loss against lr, log x, the suggestion marked) and ``DIR/lr_find.json`` (the suggestion,
the rule, the settings and the curve), replacing the folder as a whole, atomically. Nothing else is written: no run
directory, no weights (the model lives in memory only), no tracker. Differences from training, by design: float32
throughout (no mixed precision), one optimizer step per mini-batch (no gradient accumulation), no EMA, no scheduler,
no head feature cache.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .recipe_schema import Recipe

LR_FIND_FILES = ("lr_find.png", "lr_find.json")
BETA = 0.98  # fastai's smoothing of the recorded loss
DIVERGE_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x the best
SKIP_FIRST_DIVISOR = 10  # the steep rule drops the first n // 10 points (the loss has not started moving)...
SKIP_LAST = 5  # ...and the last five (the climb into divergence)...
MIN_KEPT = 3  # ...and needs at least three points left for a derivative and its minimum
SMITH_2017 = 'Smith 2017, "Cyclical Learning Rates for Training Neural Networks" (WACV), section 3.3'
RULE = {
    "name": "steep",
    "description": "lr at the minimum derivative of the smoothed loss over log(lr) (steepest descent), the first "
    "tenth and the last five points dropped",
    "source": "fastai SuggestionMethod.Steep; torch-lr-finder's suggestion",
}


def _kept_points(n: int) -> int:
    """How many of ``n`` curve points the steep rule looks at, after its trimming."""
    return n - n // SKIP_FIRST_DIVISOR - SKIP_LAST


MIN_POINTS = next(n for n in range(1, 1000) if _kept_points(n) >= MIN_KEPT)  # 8: the least --num-iter


class _OneProcess:
    """What the trainer's data factories ask of an accelerator here: ``main_process_first`` (one process: no-op)."""

    def main_process_first(self):
        return contextlib.nullcontext()


@dataclass
class RangeTestParts:
    """The recipe's pieces the range test drives: the model (train mode, on ``device``), its optimizer, the
    training loader, the criterion, and the recipe's ``clip_grad`` / ``channels_last``."""

    model: Any
    optimizer: Any
    loader: Any
    criterion: Any
    clip_grad: float | None
    channels_last: bool


def build_parts(recipe: Recipe, device: str) -> RangeTestParts:
    """The recipe's model, optimizer, loss and training loader, from the trainer's factories: the ONE place this
    module calls them. Raises :class:`UsageError` as the
    trainer's preflight checks do (data root, model, freeze strategy, input size)."""
    from accelerate.utils import set_seed

    from .trainer import build, loaders, losses
    from .trainer.preflight import check_data_root, preflight

    check_data_root(recipe)
    preflight(recipe)
    set_seed(recipe.seed)  # python, numpy and torch: the same model init and batches as a run of the recipe
    process = _OneProcess()
    splits = loaders.load_splits(recipe, process)
    model = build.create_model(recipe, len(splits["train"].features["label"].names))
    config = build.data_config(model, recipe)
    splits = loaders.prepare_splits(splits, recipe, config, process)
    model = build.freeze_model(model, recipe).to(device)
    train_loader, _val_loader, _eval_transform = loaders.image_loaders(splits, recipe, config)
    optimizer = build.create_optimizer(model, recipe)
    # the recipe's loss (label smoothing, class weights); batches are not mixed (train.mixup), as fastai's lr_find
    labels = loaders.train_labels(splits) if recipe.train.class_weights == "balanced" else []
    weight = losses.class_weights(recipe, labels, len(splits["train"].features["label"].names))
    criterion = losses.create_criterion(recipe, None if weight is None else weight.to(device), soft_targets=False)
    train = recipe.train
    return RangeTestParts(model, optimizer, train_loader, criterion, train.clip_grad, train.channels_last)


def exponential_lrs(start_lr: float, end_lr: float, num_iter: int) -> list[float]:
    """``num_iter`` learning rates from ``start_lr`` to ``end_lr`` (both included), evenly spaced in log(lr)."""
    return [start_lr * (end_lr / start_lr) ** (i / max(1, num_iter - 1)) for i in range(num_iter)]


def _repeat(loader) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UsageError("the training split gives no mini-batch (fewer images than train.batch_size?)")


def range_test(parts: RangeTestParts, lrs: Sequence[float], device: str, beta: float = BETA) -> dict[str, Any]:
    """Train one mini-batch per lr of ``lrs`` (each param group at ``lr * lr_scale``, timm's layer decay), recording
    ``{"lr", "loss" (smoothed, nats), "raw_loss" (nats), "diverged"}``; stops after the first point whose smoothed
    loss is not finite or exceeds ``DIVERGE_FACTOR`` x the best smoothed loss so far (that point is kept)."""
    import torch

    from .trainer.loop import batch_inputs

    model, optimizer = parts.model, parts.optimizer
    model.train()
    batches = _repeat(parts.loader)
    curve: dict[str, Any] = {"lr": [], "loss": [], "raw_loss": [], "diverged": False}
    average, best = 0.0, math.inf
    for i, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        images, labels = batch_inputs(next(batches), parts.channels_last)
        loss = parts.criterion(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if parts.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), parts.clip_grad)
        optimizer.step()
        raw = float(loss.detach())
        average = beta * average + (1 - beta) * raw
        smoothed = average / (1 - beta ** (i + 1))  # bias correction of the zero start
        for key, value in (("lr", lr), ("loss", smoothed), ("raw_loss", raw)):
            curve[key].append(value)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGE_FACTOR * best:
            curve["diverged"] = True
            break
    return curve


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """The ``steep`` rule (see the module docstring): ``(lr, index into lrs)``.

    Raises:
        UsageError: fewer than :data:`MIN_POINTS` points up to the last finite one (the loss diverged early).
    """
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    n = finite[-1] + 1 if finite else 0
    if n < MIN_POINTS:
        raise UsageError(
            f"the loss diverged after {len(losses)} mini-batch(es): {n} usable point(s), the {RULE['name']} rule "
            f"needs at least {MIN_POINTS}; lower --end-lr or raise --num-iter"
        )
    start = n // SKIP_FIRST_DIVISOR
    stop = n - SKIP_LAST
    log_lr = np.log(np.asarray(lrs[start:stop], dtype=np.float64))
    slope = np.gradient(np.asarray(losses[start:stop], dtype=np.float64), log_lr)
    index = start + int(np.argmin(slope))
    return float(lrs[index]), index


def lr_find_figure(curve: dict[str, Any], suggested: float, index: int, title: str):
    """Smoothed loss (and the raw loss, faint) against the learning rate, log x, the suggestion marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve["lr"], curve["raw_loss"], color="#999999", alpha=0.5, linewidth=1, label="loss")
    ax.plot(curve["lr"], curve["loss"], color="#0969da", linewidth=2, label=f"smoothed loss (beta {BETA})")
    ax.plot([suggested], [curve["loss"][index]], "o", color="#d1242f", markersize=9, label=f"steep: {suggested:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def check_settings(start_lr: float, end_lr: float, num_iter: int) -> None:
    """Raises :class:`UsageError` unless 0 < start_lr < end_lr (finite) and num_iter >= :data:`MIN_POINTS`."""
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise UsageError(f"--start-lr must be a positive number, got {start_lr}")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise UsageError(f"--end-lr must be a number above --start-lr ({start_lr}), got {end_lr}")
    if num_iter < MIN_POINTS:
        raise UsageError(
            f"--num-iter must be at least {MIN_POINTS} (the {RULE['name']} rule drops the first tenth and the last "
            f"{SKIP_LAST} points and needs {MIN_KEPT} left), got {num_iter}"
        )


def lr_find(
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    out_dir: str | Path,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the range test of a recipe (with ``key=value`` overrides) and write ``lr_find.png`` and ``lr_find.json``
    into ``out_dir``; returns the JSON content (``suggested_lr`` in the optimizer's lr units).

    Raises:
        UsageError: bad settings, a recipe mistake, ``out_dir`` holding other files, or a loss that diverged at
            once; all before anything is written.
    """
    from .atomic import atomic_directory, atomic_write_json
    from .config import load_typed_recipe
    from .evaluate import check_out_dir
    from .evaluation import float32_math
    from .plots import save_figure
    from .predict import resolve_device

    check_settings(start_lr, end_lr, num_iter)
    out = Path(out_dir)
    check_out_dir(out, LR_FIND_FILES)
    recipe = load_typed_recipe(recipe_path, overrides)
    device = resolve_device(device)
    parts = build_parts(recipe, device)
    with float32_math():
        curve = range_test(parts, exponential_lrs(start_lr, end_lr, num_iter), device)
    suggested, index = suggest_lr(curve["lr"], curve["loss"])
    model = recipe.model
    result = {
        "suggested_lr": suggested,
        "rule": RULE,
        "method": f"learning-rate range test, {SMITH_2017}; exponential lr schedule, loss smoothed by an EMA "
        f"(beta {BETA}, bias-corrected), stopped once above {DIVERGE_FACTOR:g}x the best",
        "settings": {"start_lr": start_lr, "end_lr": end_lr, "num_iter": num_iter, "beta": BETA, "device": device},
        "recipe": str(recipe_path),
        "overrides": list(overrides),
        "model": model.name,
        "freeze": str(model.freeze),
        "optimizer": recipe.train.optimizer,
        "batch_size": recipe.train.batch_size,
        "iterations": len(curve["lr"]),
        "diverged": curve["diverged"],
        "curve": {key: curve[key] for key in ("lr", "loss", "raw_loss")},
    }
    title = f"LR range test: {model.name} (freeze {model.freeze}, {recipe.train.optimizer})"
    figure = lr_find_figure(curve, suggested, index, title)
    with atomic_directory(out, overwrite=True) as tmp:
        picture, data = LR_FIND_FILES
        save_figure(figure, tmp / picture)
        atomic_write_json(tmp / data, result)
    return {**result, "out_dir": str(out)}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo lr-find`` to ``parser``."""
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.freeze=head")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for lr_find.png and lr_find.json")
    parser.add_argument("--start-lr", type=float, default=1e-7, metavar="LR", help="first learning rate (1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, metavar="LR", help="last learning rate (10)")
    parser.add_argument("--num-iter", type=int, default=100, metavar="N", help="mini-batches in the sweep (100)")
    parser.add_argument("--device", default="auto", help="torch device; auto (default): cuda if available, else cpu")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo lr-find`` and print the suggestion; returns 0."""
    check_settings(args.start_lr, args.end_lr, args.num_iter)
    result = lr_find(
        args.recipe, args.overrides, out_dir=args.out, start_lr=args.start_lr, end_lr=args.end_lr,
        num_iter=args.num_iter, device=args.device,
    )  # fmt: skip
    stopped = ", stopped early: the loss diverged" if result["diverged"] else ""
    print(
        f"suggested lr {result['suggested_lr']:.3g} ({RULE['name']} rule) after {result['iterations']} mini-batches"
        f"{stopped} -> {result['out_dir']}"
    )
    return 0
