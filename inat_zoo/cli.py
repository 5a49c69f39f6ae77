"""The ``inat-zoo`` command: a thin, lazy dispatcher.

Each sub-command lives in its own module, which provides ``configure_parser(parser)`` (adds its arguments) and
``run_cli(args) -> int | None``. Only the module of the command being run is imported, so ``inat-zoo push`` does
not pay for Captum and ``inat-zoo --help`` stays quick. User mistakes are raised as :class:`UsageError` and printed
as ``inat-zoo: error: ...`` with exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import UsageError

PROG = "inat-zoo"

# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("inat_zoo.models.listing", "list the registered inat_* architectures with parameter counts"),
    "complexity": ("inat_zoo.complexity", "closed-form and measured parameter / MAC counts of FlexibleCNN"),
    "data": ("inat_zoo.data.cli", "download, sample, prepare and check image folders"),
    "train": ("inat_zoo.train", "train a recipe (same as `accelerate launch -m inat_zoo.train`)"),
    "evaluate": ("inat_zoo.evaluate", "test metrics, confusion matrix and prediction grid of a model"),
    "explain": ("inat_zoo.explain", "first-layer filters, guided backprop and Grad-CAM pictures"),
    "predict": ("inat_zoo.predict", "top-k labels for images"),
    "export": ("inat_zoo.onnx_export", "export a model to ONNX (checked against PyTorch with onnxruntime)"),
    "app": ("inat_zoo.app", "a Gradio web app: top-5 labels and Grad-CAM for uploaded photos"),
    "push": ("inat_zoo.hub", "build the Hub folder of a run (model card included) and upload it, optionally a Space"),
    "sweep": ("inat_zoo.sweep.cli", "hyperparameter sweep with W&B or offline with Optuna"),
    "report": ("inat_zoo.report", "compare runs and sweeps in a table with plots"),
    "lr-find": ("inat_zoo.lr_find", "learning-rate range test of a recipe (Smith 2017): loss curve and suggested lr"),
    "demo": ("inat_zoo.demo", "the whole pipeline on the embedded synthetic sample"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but every error reads ``inat-zoo: error: ...`` (exit 2) like the rest of the tool."""

    def error(self, message: str):  # noqa: D401
        """Print the usage and ``inat-zoo: error: <message>`` to stderr, then exit with status 2."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def _selected_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``inat-zoo`` parser with one subcommand per entry of ``COMMANDS``.

    Only the command named in ``argv`` is imported and configured (the others stay cheap help entries).
    """
    from . import __version__

    parser = _Parser(prog=PROG, description="iNaturalist 12K model zoo for timm.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    selected = _selected_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        cmd_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == selected:
            module = importlib.import_module(module_name)
            module.configure_parser(cmd_parser)
            cmd_parser.set_defaults(_run=module.run_cli)
    return parser


def _quiet_pillow_size_warning() -> None:
    """Pillow warns (a two-line Python warning) about images of 89-179 megapixels and still decodes them; above
    that it refuses, and the commands report that in one line. A command-line tool prints one line per problem, so
    the warning is silenced here, for this process and the DataLoader workers it forks (not for library users)."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inat-zoo``: run the command in ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 for a :class:`UsageError` (one ``inat-zoo: error:`` line; ``--debug`` re-raises it with its
    traceback), 130 on Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _quiet_pillow_size_warning()
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._run(args) or 0)
    except UsageError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
