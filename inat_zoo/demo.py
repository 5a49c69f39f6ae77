"""``inat-zoo demo`` (what ``make demo`` runs): the whole pipeline on the embedded synthetic sample.

sample data -> train ``recipes/demo.yaml`` -> evaluate on the test split -> Captum explanations -> Hub folder
(``push --dry-run``) -> load the Hub folder back with timm and check it gives the trained model's logits.
Every step is the same code the individual commands run; nothing here is demo-only logic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .errors import UsageError
from .resources import bundled_path
from .rundir import CHECKPOINTS, HISTORY_FILE, METRICS_FILE, MODEL_DIR, RECIPE_FILE

DEFAULT_RECIPE = bundled_path("recipes/demo.yaml")


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def check_hub_folder_loads(hub_dir: Path, run_dir: Path) -> float:
    """Max |logit difference| between ``local-dir:<hub folder>`` and the run's own model on one batch."""
    import timm
    import torch

    reference = timm.create_model(f"local-dir:{run_dir / MODEL_DIR}", pretrained=True).eval()
    loaded = timm.create_model(f"local-dir:{hub_dir}", pretrained=True).eval()
    size = timm.data.resolve_model_data_config(loaded)["input_size"]
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((reference(x) - loaded(x)).abs().max())


def run_demo(out: Path, recipe: Path = DEFAULT_RECIPE, overrides: list[str] | None = None) -> dict:
    """The end-to-end demo under ``out``: synthetic sample, train, evaluate, explain, Hub folder loaded back by timm.

    Returns a summary dict (``run_dir``, ``test_accuracy``, ``eval_accuracy``, ``hub_dir``, ``minutes``). Raises
    RuntimeError if the Hub folder's model differs from the trained one (max logit difference above 1e-5).
    """
    from .config import load_recipe
    from .data.sample import write_sample
    from .evaluate import evaluate
    from .explain import explain
    from .hub import build_hub_folder
    from .train import train

    out = Path(out)
    sample_root = out / "sample"
    run_dir = out / time.strftime("run-%Y%m%d-%H%M%S")
    t0 = time.time()

    _step(f"synthetic sample data -> {sample_root}")
    if (sample_root / "train").is_dir():
        print("already there, reusing it")
    else:
        write_sample(sample_root)

    _step(f"train {recipe} -> {run_dir}")
    config = load_recipe(recipe, [f"data.root={sample_root}", f"output_dir={run_dir}", *(overrides or [])])
    metrics = train(config)

    _step("evaluate on the test split (the val/ folder)")
    eval_metrics = evaluate(str(run_dir))

    _step("explain: first-layer filters, guided backprop of CONV5 neurons, Grad-CAM")
    pictures = explain(str(run_dir))

    _step("Hub folder (push --dry-run) and loading it back with timm")
    hub_dir = build_hub_folder(run_dir, run_dir / "hub", repo_id="your-name/inat12k-demo")
    max_diff = check_hub_folder_loads(hub_dir, run_dir)
    if max_diff > 1e-5:
        raise RuntimeError(f"the Hub folder does not reproduce the trained model (max logit diff {max_diff:.2e})")

    summary = {
        "run_dir": str(run_dir),
        "test_accuracy": metrics["test"]["accuracy"],
        "eval_accuracy": eval_metrics["accuracy"],
        "hub_dir": str(hub_dir),
        "minutes": (time.time() - t0) / 60,
    }
    _step("done")
    print(
        f"test accuracy        {metrics['test']['accuracy']:.1%} on {metrics['test']['num_samples']} images"
        f" (chance: {1 / len(eval_metrics['class_names']):.0%})"
    )
    layout = f"{RECIPE_FILE}, {METRICS_FILE}, {HISTORY_FILE}, {MODEL_DIR}/, {CHECKPOINTS}/"
    print(f"run directory        {run_dir}  ({layout})")
    print(f"evaluation           {eval_metrics['out_dir']}")
    print(f"explanations         {', '.join(str(p) for p in pictures.values())}")
    print(f"Hub folder           {hub_dir}  (loads back with timm: max logit diff {max_diff:.1e})")
    print(f"took                 {summary['minutes']:.1f} min")
    print(f"\nnext: inat-zoo predict IMAGE --model {run_dir}    |    inat-zoo push {run_dir} --repo-id USER/NAME")
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo demo`` to ``parser``."""
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="where the sample and runs go")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="training recipe")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.epochs=2")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo demo``; returns 0. Raises :class:`UsageError` if the recipe file does not exist."""
    if not args.recipe.is_file():
        raise UsageError(f"recipe not found: {args.recipe}")
    run_demo(args.out, args.recipe, args.overrides)
    return 0
