"""``inat-zoo export MODEL --format onnx --out FILE``: any MODEL as an ONNX file, checked with onnxruntime.

The exporter is chosen deliberately, and said: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
built on ``torch.export``; it needs ``onnxscript`` and writes opset 18 or newer) when onnxscript is importable, else
the TorchScript-based one (``dynamo=False``; opsets 7-20, no onnxscript). ``--exporter`` overrides the choice. The
dynamo exporter is preferred because it is torch's default and the one still developed; the TorchScript one stays
for old opsets and for environments without onnxscript.

The file has a dynamic batch axis (input ``pixel_values`` (N, 3, H, W) float32 normalised as the model expects,
output ``logits`` (N, num_classes) float32) and carries the preprocessing and the label names in its
``metadata_props``, as JSON strings. Before anything is written at ``--out`` the file is run with onnxruntime on CPU
on a batch of 3 and compared with the PyTorch logits; a larger difference than ``--atol`` is an error. The file is
written atomically: a failure leaves nothing at ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from .errors import UsageError
from .loading import LoadedModel, load_model

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'inat-zoo[onnx]'"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
CHECK_BATCH = 3  # the onnxruntime check runs a batch of this size (the export traced another: the axis is dynamic)
DEFAULT_ATOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
# opsets each exporter writes (the dynamo exporter silently writes 18 when asked for less; checked after export too)
_DYNAMO_MIN_OPSET = 18
_TORCHSCRIPT_OPSETS = (7, 20)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    max_abs_diff: float  # max |onnxruntime - PyTorch| over the check batch's logits
    metadata: dict[str, str]


def require_onnx() -> None:
    """Raise a one-line :class:`UsageError` naming the extra to install when onnx or onnxruntime is missing."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"ONNX export needs {' and '.join(missing)}: {INSTALL_HINT}")


def choose_exporter(exporter: str = "auto") -> str:
    """``"dynamo"`` or ``"torchscript"``: ``auto`` is dynamo when onnxscript is importable. Raises UsageError for an
    unknown name, or for dynamo without onnxscript."""
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "auto":
        return "dynamo" if has_onnxscript else "torchscript"
    if exporter == "dynamo" and not has_onnxscript:
        raise UsageError(f"the dynamo exporter needs onnxscript: {INSTALL_HINT} (or --exporter torchscript)")
    return exporter


def opset_range(exporter: str) -> tuple[int, int]:
    """The opsets ``exporter`` writes that this onnxruntime also runs: ``(lowest, highest)`` inclusive."""
    import onnx.defs

    highest = min(onnx.defs.onnx_opset_version(), _onnxruntime_max_opset())
    if exporter == "dynamo":
        return _DYNAMO_MIN_OPSET, highest
    return _TORCHSCRIPT_OPSETS[0], min(_TORCHSCRIPT_OPSETS[1], highest)


def _onnxruntime_max_opset() -> int:
    """The newest ai.onnx opset this onnxruntime runs (its schemas; 23 for onnxruntime 1.32 is a safe fallback)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        versions = [s.since_version for s in state.get_all_operator_schema() if s.domain in ("", "ai.onnx")]
        return max(versions)
    except (ImportError, AttributeError, RuntimeError, ValueError):
        return 23


def check_opset(opset: int, exporter: str) -> int:
    """``opset`` when ``exporter`` can write it and onnxruntime can run it, else a one-line UsageError."""
    low, high = opset_range(exporter)
    if not low <= opset <= high:
        hint = " (older opsets: --exporter torchscript)" if exporter == "dynamo" and opset < low else ""
        raise UsageError(f"--opset {opset} does not fit: the {exporter} exporter writes opsets {low}-{high}{hint}")
    return opset


def onnx_metadata(loaded: LoadedModel) -> dict[str, str]:
    """The ``metadata_props`` of the file: what a runtime needs to preprocess an image and name the outputs.

    Values are strings (ONNX allows nothing else): ``input_size`` ``[3, H, W]`` pixels, ``mean``/``std`` per RGB
    channel of [0, 1] pixel values, ``interpolation``, ``crop_pct``, ``label_names`` (JSON lists/strings), the
    model reference, ``input_name``/``output_name`` and the writer.
    """
    from . import __version__

    cfg = loaded.data_config
    meta: dict[str, Any] = {
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": cfg.get("crop_pct", 1.0),
        "crop_mode": cfg.get("crop_mode", "center"),
        "label_names": list(loaded.label_names),
        "model": loaded.ref if loaded.run_dir is None else loaded.run_dir.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "producer": f"inat_zoo {__version__}",
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def check_batch(data_config: dict[str, Any], batch: int = CHECK_BATCH, seed: int = 0) -> torch.Tensor:
    """A reproducible model input (batch, 3, H, W) float32: uniform [0, 1] pixels normalised with mean/std."""
    _, h, w = (int(v) for v in data_config["input_size"])
    pixels = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int) -> None:
    """Run torch.onnx.export quietly (its progress lines and deprecation notes are not ours to print)."""
    if exporter == "dynamo":
        axes: dict[str, Any] = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
    else:
        axes = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=exporter == "dynamo",
            external_data=False,
            **axes,
        )


def export_to_bytes(loaded: LoadedModel, exporter: str, opset: int) -> bytes:
    """The model (eval mode, CPU, float32) as a serialised ONNX model with :func:`onnx_metadata`.

    Raises UsageError when the export fails or does not write ``opset``.
    """
    import onnx

    model = loaded.model.eval().float().cpu()
    example = check_batch(loaded.data_config, batch=2, seed=1)  # batch 2: torch.export specialises a batch of 1
    with tempfile.TemporaryDirectory(prefix="inat_zoo_onnx_") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            _torch_export(model, example, path, exporter, opset)
            proto = onnx.load(str(path))
        except Exception as e:  # any exporter failure (unsupported operator, tracing error): the user's model
            raise UsageError(f"cannot export {loaded.ref} to ONNX with the {exporter} exporter: {_one_line(e)}") from e
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if written != opset:
        raise UsageError(f"--opset {opset} does not fit {loaded.ref}: the {exporter} exporter wrote opset {written}")
    onnx.helper.set_model_props(proto, onnx_metadata(loaded))
    return proto.SerializeToString()


def compare_with_onnxruntime(loaded: LoadedModel, model_bytes: bytes) -> float:
    """Max |onnxruntime - PyTorch| of the logits (float, in logit units) on a batch of :data:`CHECK_BATCH`.

    onnxruntime runs on the CPU provider. Raises UsageError when onnxruntime cannot load or run the file.
    """
    import onnxruntime

    x = check_batch(loaded.data_config)
    with torch.no_grad():
        expected = loaded.model.eval().float().cpu()(x).numpy()
    try:
        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UsageError(f"onnxruntime cannot run the exported {loaded.ref}: {_one_line(e)}") from e
    if got.shape != expected.shape:
        raise UsageError(f"onnxruntime gave logits of shape {got.shape}, PyTorch {expected.shape}")
    return float(abs(got - expected).max())


def check_parent_folder(option: str, out: Path) -> None:
    """A one-line :class:`UsageError` when the folder of ``out`` cannot be made: its nearest existing ancestor is
    not a folder. Missing folders are fine: the atomic write creates them (``export --out``, ``predict --csv``)."""
    for ancestor in out.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UsageError(f"{option} {out}: {ancestor} is a file, not a folder")
            return


def check_out_path(out: str | Path) -> Path:
    """``--out`` as a Path: a ``.onnx`` file name whose place is not a folder and whose folder exists or can be
    made (checked before any work)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: the file name must end in .onnx")
    check_parent_folder("--out", out)
    return out


def export_onnx(
    model: str | LoadedModel,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    atol: float = DEFAULT_ATOL,
) -> OnnxExport:
    """Export MODEL (any reference :func:`inat_zoo.loading.load_model` takes, or a loaded one) to ``out``.

    The model runs in eval mode, float32, on the CPU. Input ``pixel_values`` (N, 3, H, W) float32, output ``logits``
    (N, num_classes) float32, N dynamic. The file is checked with onnxruntime against PyTorch on a batch of 3
    before it is written (atomically, with the umask's mode).

    Raises:
        UsageError: onnx/onnxruntime missing, a bad ``out``, ``opset`` or ``exporter``, a model that cannot load
            or export, or a max abs difference above ``atol``. Nothing is left at ``out`` then.
    """
    require_onnx()
    exporter = choose_exporter(exporter)
    check_opset(opset, exporter)
    out = check_out_path(out)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, "cpu")
    model_bytes = export_to_bytes(loaded, exporter, opset)
    diff = compare_with_onnxruntime(loaded, model_bytes)
    if not diff <= atol:  # also catches NaN
        raise UsageError(
            f"the ONNX export of {loaded.ref} differs from PyTorch by {diff:.3g} (max abs logit difference on "
            f"{CHECK_BATCH} images; tolerance {atol:g}): not written"
        )
    atomic_write_bytes(out, model_bytes)
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    return OnnxExport(path=out, exporter=exporter, opset=opset, max_abs_diff=diff, metadata=meta)


def exporter_description(exporter: str) -> str:
    """How ``inat-zoo export`` names the exporter that runs."""
    if exporter == "dynamo":
        return "torch.onnx dynamo exporter (torch.export + onnxscript)"
    return "torch.onnx TorchScript exporter (dynamo=False)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo export`` to ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format (default: onnx)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help="ONNX opset (default 18)")
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="auto (default): dynamo when onnxscript is installed, else torchscript",
    )
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help="max abs logit difference allowed (default 1e-4)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo export``: write the ONNX file, say which exporter ran and the measured difference; returns 0."""
    require_onnx()
    exporter = choose_exporter(args.exporter)
    check_opset(args.opset, exporter)  # user mistakes first: nothing is printed before them
    check_out_path(args.out)
    loaded = load_model(args.model, "cpu")  # a MODEL that cannot load is one line before anything is printed
    print(f"exporter: {exporter_description(exporter)}, opset {args.opset}")
    result = export_onnx(loaded, args.out, opset=args.opset, exporter=exporter, atol=args.atol)
    print(
        f"onnxruntime (CPU) vs PyTorch on {CHECK_BATCH} images: max abs logit difference {result.max_abs_diff:.3g} "
        f"(tolerance {args.atol:g})"
    )
    print(f"wrote {result.path} (input {INPUT_NAME} {result.metadata['input_size']}, dynamic batch)")
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
