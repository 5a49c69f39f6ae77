"""``inat-zoo data {download,sample,prepare,check}``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``inat-zoo data`` actions (download, sample, prepare, check) and their options to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    p = sub.add_parser("download", help="fetch nature_12K.zip, verify it and extract ROOT/inaturalist_12K")
    p.add_argument("--root", type=Path, default=None, help="folder to hold inaturalist_12K (default: the cache)")
    p.add_argument("--url", default=None, help="archive URL (default: the official nature_12K.zip)")
    p.add_argument("--sha256", default=None, metavar="HEX", help="expected sha256 of the archive")
    p.add_argument("--size", type=int, default=None, help="expected archive size in bytes")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip after extracting it")

    p = sub.add_parser("sample", help="write the synthetic 10-class sample in the nature_12K layout")
    p.add_argument("--root", type=Path, required=True, help="folder to write train/ and val/ into")
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--min-side", type=int, default=96)
    p.add_argument("--max-side", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "prepare",
        help="cache a resized copy of ROOT in the datasets Arrow cache (faster epochs); a recipe with"
        " data.prepared_cache: true and the same image size, val_fraction and seed reuses it",
    )
    p.add_argument("root", metavar="ROOT", help="folder with train/ and val/ (or a Hub dataset id)")
    p.add_argument("--image-size", type=int, required=True, help="training image size; stored short side ~1.14x")
    p.add_argument(
        "--crop-pct",
        type=float,
        default=0.875,
        help="the model's evaluation crop_pct (timm data config; default 0.875); below 0.875 the copy keeps a larger"
        " short side (image size / crop_pct), as the trainer needs",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="as the recipe's data.val_fraction")
    p.add_argument("--seed", type=int, default=42, help="as the recipe's seed (the validation split depends on it)")
    p.add_argument("--num-proc", type=int, default=None)

    p = sub.add_parser("check", help="report image counts and unreadable files of ROOT")
    p.add_argument("root", metavar="ROOT", type=Path)
    p.add_argument("--strict", action="store_true", help="exit 2 if any file is unreadable")

    for action_parser in sub.choices.values():  # `--debug` is read by inat_zoo.cli.main; accept it anywhere
        action_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _download(args: argparse.Namespace) -> int:
    from .download import DEFAULT_URL, download_inat12k

    target = download_inat12k(
        args.root, url=args.url or DEFAULT_URL, size=args.size, sha256=args.sha256, keep_archive=args.keep_archive
    )
    print(target)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sample import write_sample

    root = write_sample(
        args.root,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        min_side=args.min_side,
        max_side=args.max_side,
        seed=args.seed,
    )
    print(f"wrote a synthetic sample to {root} (train/ and val/, 10 synth_* classes)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .imagefolder import load_inat12k
    from .prepare import prepare_dataset, short_side_for

    if args.image_size < 8:
        raise UsageError(f"--image-size must be at least 8, got {args.image_size}")
    if not 0.0 < args.crop_pct <= 1.0:
        raise UsageError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    dsdict = load_inat12k(args.root, val_fraction=args.val_fraction, seed=args.seed)
    short_side = short_side_for(args.image_size, args.crop_pct)
    prepared = prepare_dataset(dsdict, short_side, args.num_proc)
    sizes = ", ".join(f"{name}: {len(split)}" for name, split in prepared.items())
    print(f"prepared {args.root} at short side {short_side} px ({sizes})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .checks import check_folder, format_paths
    from .crop_decode import JPEG_DECODER

    report = check_folder(args.root)
    print(report.format())
    print(f"training crops of JPEGs decode with: {JPEG_DECODER}")
    if args.strict and report.bad_files:
        raise UsageError(f"{args.root}: {len(report.bad_files)} unreadable file(s): {format_paths(report.bad_files)}")
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """Run the parsed ``inat-zoo data`` action; returns the exit status (user mistakes raise UsageError)."""
    handlers = {"download": _download, "sample": _sample, "prepare": _prepare, "check": _check}
    return handlers[args.data_command](args)
