"""The accelerate trainer: ``python -m inat_zoo.train RECIPE [key=value ...]`` (or ``accelerate launch -m ...``).

One function, :func:`train`, runs a recipe under whatever launch context exists (plain python = one process;
``accelerate launch``/torchrun = DDP) and writes the run directory described in the README: the resolved
``recipe.yaml``, ``checkpoints/`` (accelerate states, the last K, each committed by an atomic rename so a kill never
leaves one that resume would trust), ``model/`` (timm ``save_for_hf`` folder of the best epoch by validation
accuracy, or by ``train.early_stopping.metric``), ``history.jsonl`` and ``metrics.json``. The test split is evaluated
once, at the end, with that model. Only the main process writes files or prints.

The pieces live in :mod:`inat_zoo.trainer` (factories, preflight, checkpoints, the loop, the accelerate adapter);
this module is the entry point and re-exports the names callers and tests use.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from typing import Any

from .config import dump_recipe, load_typed_recipe, typed_recipe
from .recipe_schema import Recipe
from .rundir import (  # noqa: F401  (STATE_FILE, complete_checkpoints, check_run_directory: re-exported for tests)
    STATE_FILE,
    check_run_directory,
    complete_checkpoints,
    forget_history,
    lock_run_directory,
    partial_checkpoints,
    stopped_before_first_checkpoint,
    write_recipe,
)
from .trainer.build import param_groups as _param_groups  # noqa: F401  (re-exported for tests)
from .trainer.checkpoint import TrainerState, finished_run  # noqa: F401  (TrainerState: re-exported)
from .trainer.loop import EpochCallback, Trainer
from .trainer.loop import Trainer as _Trainer  # noqa: F401  (the name bench/trainer_overhead.py imports)
from .trainer.preflight import check_data_root, preflight
from .trainer.tracking import end_trackers

__all__ = [
    "STATE_FILE",
    "TrainerState",
    "check_data_root",
    "check_run_directory",
    "complete_checkpoints",
    "configure_parser",
    "preflight",
    "run_cli",
    "train",
]


def train(recipe: Mapping[str, Any] | Recipe, *, epoch_callback: EpochCallback | None = None) -> dict:
    """Run one training from a recipe (a mapping as in a recipe file, parsed here, or a typed :class:`Recipe`) and
    return the content of metrics.json.

    Everything the user can get wrong is checked before the first file is written (:func:`preflight`).
    ``epoch_callback(epoch, record)`` runs on the main process after each epoch; an exception from it stops
    training and propagates. Resuming a finished run (early stopping ended it or all ``train.epochs`` ran, and its
    test pass wrote metrics.json) returns its metrics and changes nothing; one killed before that test pass runs only
    the test pass. Raises :class:`UsageError` for a mistake in the recipe or its data.
    """
    recipe = typed_recipe(recipe)
    resolved = recipe.model_dump()  # the recipe file's form: written as recipe.yaml, compared on resume
    check_data_root(recipe)
    resume_from = check_run_directory(resolved)
    preflight(recipe)
    trainer = Trainer(recipe, resume_from, epoch_callback)
    acc = trainer.accelerator
    acc.wait_for_everyone()  # every rank has checked the run directory before anyone writes into it
    lock = None
    try:
        finished = finished_run(resume_from, trainer.output_dir, recipe.train.epochs)
        if finished is not None:  # resuming a finished run (early stopped or all epochs): say so, touch nothing
            how, metrics = finished
            acc.print(f"{trainer.output_dir} {how}: nothing to resume, nothing changed")
            return metrics
        if acc.is_main_process:
            out = trainer.output_dir
            out.mkdir(parents=True, exist_ok=True)
            lock = lock_run_directory(out)
            for leftover in partial_checkpoints(out):
                shutil.rmtree(leftover, ignore_errors=True)
            if resume_from is None and stopped_before_first_checkpoint(out):
                acc.print(f"{out} holds a start that stopped before its first checkpoint: starting afresh")
                forget_history(out)
            write_recipe(out, dump_recipe(resolved))
        acc.wait_for_everyone()
        return trainer.fit()
    finally:
        end_trackers(acc, recipe, trainer.mlflow_uri_before)
        if lock is not None:
            lock.close()


# -------------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``inat-zoo train`` (recipe and ``key=value`` overrides) to ``parser``."""
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=3e-4")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo train``: load the recipe with its overrides and train; returns 0."""
    train(load_typed_recipe(args.recipe, args.overrides))
    return 0


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
