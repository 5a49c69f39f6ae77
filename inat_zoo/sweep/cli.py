"""``inat-zoo sweep SWEEP.yaml [options] [key=value ...]``: pick the backend and run the sweep file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .optuna_backend import run_optuna
from .spec import load_sweep
from .wandb_backend import run_wandb


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("optuna", "wandb"), default="optuna", help="default: optuna (offline)")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: run_cap or 10)")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--recipe", default=None, help="base recipe (default: the sweep file's `recipe:`)")
    parser.add_argument("--project", default=None, help="W&B project (default: the recipe's track.project)")
    parser.add_argument("--entity", default=None, help="W&B entity")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo sweep`` to ``parser`` (options may also follow the overrides)."""
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="sweep file in W&B format (recipes/sweeps/)")
    _add_options(parser)
    # Options may follow the overrides; argparse cannot interleave a `*` positional, so they are re-read in run_cli.
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="applied to every trial")
    # The late parser in run_cli takes this parser's class (inat_zoo.cli's), so its errors read `inat-zoo: error:`
    # like every other; asking the namespace instead of importing inat_zoo.cli keeps imports one way.
    parser.set_defaults(_parser_class=type(parser))


def _reparse(parser_cls: type, args: argparse.Namespace) -> argparse.Namespace:
    late = parser_cls(prog="inat-zoo sweep", add_help=False)
    _add_options(late)
    late.add_argument("overrides", nargs="*")
    for action in late._actions:
        action.default = argparse.SUPPRESS
    rest = list(args.overrides)
    del args.overrides  # argparse warns when a positional's dest is already in the namespace
    args = late.parse_intermixed_args(rest, namespace=args)
    if not hasattr(args, "overrides"):
        args.overrides = []
    return args


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo sweep`` on the Optuna or W&B backend; returns 0.

    Raises:
        UsageError: an override without ``=`` (and whatever loading the sweep file or a trial raises).
    """
    args = _reparse(getattr(args, "_parser_class", argparse.ArgumentParser), args)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"expected key=value overrides after the sweep file, got {' '.join(bad)}")
    sweep = load_sweep(args.sweep_file, recipe=args.recipe)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    if args.backend == "wandb":
        run_wandb(sweep, args.overrides, args.trials, out, project=args.project, entity=args.entity)
    else:
        run_optuna(sweep, args.overrides, args.trials, out)
    return 0
