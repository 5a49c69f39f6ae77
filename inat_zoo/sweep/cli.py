"""``inat-zoo sweep SWEEP.yaml [options] [key=value ...]``: pick the backend and run the sweep file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UsageError
from .optuna_backend import run_optuna
from .spec import load_sweep
from .storage import STORAGE_ENV
from .wandb_backend import run_wandb
from .workers import parse_devices, run_workers


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("optuna", "wandb"), default="optuna", help="default: optuna (offline)")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: run_cap or 10)")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--recipe", default=None, help="base recipe (default: the sweep file's `recipe:`)")
    parser.add_argument("--project", default=None, help="W&B project (default: the recipe's track.project)")
    parser.add_argument("--entity", default=None, help="W&B entity")
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="optuna: the study's database, shared by workers on several machines (postgresql://USER@HOST/DB, "
        f"mysql://..., sqlite:///FILE.db for one machine); default: ${STORAGE_ENV} if set (keeps a password out of "
        "the process list), else the journal file in the sweep folder",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="optuna: start N worker processes on this machine"
    )
    parser.add_argument(
        "--devices", default=None, metavar="0,1,..", help="optuna: one GPU per worker (CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument(
        "--sweep-id", default=None, metavar="ENTITY/PROJECT/ID", help="wandb: join this sweep as one more agent"
    )


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
    _check_backend_options(args)
    if args.backend == "optuna" and args.storage is None:
        args.storage = os.environ.get(STORAGE_ENV) or None
    devices = parse_devices(args.devices, args.workers)
    sweep = load_sweep(args.sweep_file, recipe=args.recipe)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    if args.backend == "wandb":
        run_wandb(
            sweep, args.overrides, args.trials, out, project=args.project, entity=args.entity, sweep_id=args.sweep_id
        )
    elif devices is not None:
        return run_workers(sweep, args, out, devices)
    else:
        run_optuna(sweep, args.overrides, args.trials, out, storage=args.storage)
    return 0


def _check_backend_options(args: argparse.Namespace) -> None:
    """Options of one backend given to the other are mistakes, refused before anything runs."""
    if args.backend == "wandb":
        given = [f"--{n}" for n in ("storage", "workers", "devices") if getattr(args, n) is not None]
        if given:
            raise UsageError(
                f"{', '.join(given)} belong to --backend optuna; with W&B, run one agent per GPU or machine: "
                "CUDA_VISIBLE_DEVICES=0 inat-zoo sweep SWEEP.yaml --backend wandb --sweep-id ENTITY/PROJECT/ID"
            )
    elif args.sweep_id is not None:
        raise UsageError("--sweep-id joins a W&B sweep: it needs --backend wandb")
