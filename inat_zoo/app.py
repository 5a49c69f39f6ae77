"""``inat-zoo app MODEL``: a Gradio web app to try any MODEL on a photo: top-5 labels and a Grad-CAM overlay.

The labels come from :func:`inat_zoo.predict.predict`, the very function behind ``inat-zoo predict`` (so the app,
the command and the evaluation agree on every image), and the overlay from :func:`inat_zoo.explain.gradcam` of the
last convolutional block for the top label. The header names the model and its published test accuracy (the run's
metrics, a Hub folder's ``metrics.json``, or a Hub repo's when it can be fetched). For a run directory a few test
images of its recipe's ``data.root`` are offered as examples.

gradio is an optional extra (it caps Pillow below 13): without it the command is one line naming
``pip install 'inat-zoo[app]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .loading import LoadedModel, load_model

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'inat-zoo[app]'"
TOP_K = 5
MAX_EXAMPLES = 6
OVERLAY_MIN_SIDE = 224  # pixels: a small model input (32-64 px) is enlarged by an integer factor to be seen
API_NAME = "classify"  # the endpoint gradio_client calls: Client(url).predict(handle_file(path), api_name="/classify")
MAX_PORT = 65535


def check_address(host: str, port: int | None) -> None:
    """Raise a one-line :class:`UsageError` when ``--port`` is outside 1..65535, ``--host`` does not resolve, or
    ``port`` (when given) is already taken on ``host``; called before gradio is imported or the model loads."""
    if port is not None and not 1 <= port <= MAX_PORT:
        raise UsageError(f"--port {port} is not a port: choose one in 1..{MAX_PORT}")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"--host {host} does not resolve ({getattr(e, 'strerror', None) or e})") from e
    if port is not None:
        problem = _cannot_listen(host, port)
        if problem:
            raise UsageError(problem)


def _cannot_listen(host: str, port: int | None) -> str | None:
    """Why the app cannot listen on ``host``:``port`` (port 0 when None), in terms of ``--host`` / ``--port``;
    None when a socket binds there (as Gradio's own check, with SO_REUSEADDR)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is in use: choose another --port"
        if e.errno == errno.EACCES:
            return f"port {port} on {host} needs privileges: choose a --port above 1023"
        return f"cannot listen on --host {host}: {e.strerror or e}"
    return None


def require_gradio():
    """The gradio module; a one-line :class:`UsageError` naming the extra to install when it is missing."""
    try:
        import gradio
    except ImportError as e:
        raise UsageError(f"the app needs gradio: {INSTALL_HINT}") from e
    return gradio


def model_title(loaded: LoadedModel) -> str:
    """How the header names the model: the run's folder name, else the reference given to timm."""
    from timm.models import parse_model_name

    if loaded.run_dir is not None:
        return loaded.run_dir.name
    source, name = parse_model_name(loaded.ref)
    return Path(name).name if source == "local-dir" else name


def published_accuracy(loaded: LoadedModel) -> float | None:
    """The published test accuracy in [0, 1] of a run, a Hub folder or a Hub repo; None when none is recorded.

    A Hub repo's ``metrics.json`` is fetched with ``hf_hub_download`` (from the cache when offline); any failure
    there only leaves the accuracy out of the header.
    """
    from timm.models import parse_model_name

    from .rundir import EVAL_FOLDER, METRICS_FILE, PUBLISHED_EVAL_METRICS_FILE, published_test_accuracy, read_metrics

    if loaded.run_dir is not None:
        return published_test_accuracy(read_metrics(loaded.run_dir), read_metrics(loaded.run_dir, EVAL_FOLDER))
    source, name = parse_model_name(loaded.ref)
    if source == "local-dir":  # a Hub folder (push --dry-run) keeps metrics.json beside the model
        folder = Path(name)
        return published_test_accuracy(read_metrics(folder), _read_json_if_file(folder / PUBLISHED_EVAL_METRICS_FILE))
    if source == "hf-hub":
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = name.partition("@")
        try:
            path = hf_hub_download(repo_id, METRICS_FILE, revision=revision or None)
        except Exception as e:  # offline, no such file, no access: the header just has no accuracy
            logger.info("no %s for %s: %s", METRICS_FILE, repo_id, e)
            return None
        return published_test_accuracy(read_metrics(Path(path).parent))
    return None


def _read_json_if_file(path: Path) -> dict[str, Any] | None:
    from .rundir import read_json

    return read_json(path) if path.is_file() else None


def header_markdown(loaded: LoadedModel) -> str:
    """The app's header: model name, architecture, class count and test accuracy (Markdown)."""
    arch = (getattr(loaded.model, "pretrained_cfg", None) or {}).get("architecture") or type(loaded.model).__name__
    accuracy = published_accuracy(loaded)
    acc = f"test accuracy **{100 * accuracy:.2f}%**" if accuracy is not None else "no test accuracy recorded"
    return (
        f"# {model_title(loaded)}\n"
        f"`{arch}` · {loaded.num_classes} classes · {acc}\n\n"
        "Upload a photo (or pick an example) and press **Classify**: the top-5 labels and where the model looked "
        "(Grad-CAM of its last convolutional block, for the top label)."
    )


def example_images(loaded: LoadedModel, limit: int = MAX_EXAMPLES) -> list[str]:
    """Up to ``limit`` test images of a run's ``data.root``, one per class first; ``[]`` when not a run or when
    its data cannot be loaded (then a warning says why)."""
    if loaded.run_dir is None:
        return []
    from .evaluation import load_eval_data

    try:
        data = load_eval_data(loaded, None, "test")
    except UsageError as e:
        logger.warning("no example images: %s", e)
        return []
    first_of_class: dict[int, int] = {}
    for index, label in enumerate(data.labels):
        first_of_class.setdefault(label, index)
    order = list(first_of_class.values()) + [i for i in range(len(data.labels)) if i not in first_of_class.values()]
    paths = [_path_of(data.images.value(i)) for i in order]
    return [p for p in paths if p is not None][:limit]


def _path_of(value: Any) -> str | None:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    return str(path) if path and Path(path).is_file() else None


def gradcam_overlay(loaded: LoadedModel, image_path: str | Path, target: int) -> np.ndarray:
    """The model input of ``image_path`` with its Grad-CAM for class ``target`` blended over it: (kH, kW, 3) uint8.

    H, W are the model's input size and k the smallest integer making the shorter side at least
    :data:`OVERLAY_MIN_SIDE` (pixel repetition); the image goes through the same decode and evaluation transform as
    ``predict``; the heat map (jet colours) is divided by its own maximum and blended at 45%.
    """
    import torch
    from matplotlib import colormaps

    from .evaluation import EvalImages
    from .explain import gradcam, last_conv_block
    from .plots import denormalize

    device = next(loaded.model.parameters()).device
    x = EvalImages([str(image_path)], loaded.data_config).pixels(0)[None].to(device)
    cam = gradcam(loaded.model, last_conv_block(loaded.model), x, torch.tensor([target], device=device))
    heat = cam[0, 0].float().cpu().clamp(min=0).numpy()
    heat = heat / heat.max() if heat.max() > 0 else heat
    shown = denormalize(x[0], loaded.data_config["mean"], loaded.data_config["std"])
    blended = 0.55 * shown + 0.45 * colormaps["jet"](heat)[..., :3]
    k = max(1, -(-OVERLAY_MIN_SIDE // min(blended.shape[:2])))
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8).repeat(k, axis=0).repeat(k, axis=1)


def classify(loaded: LoadedModel, image_path: str | None) -> tuple[dict[str, float], np.ndarray]:
    """``({label: probability} of the top 5, Grad-CAM overlay)`` for one image file, through ``predict``; the
    overlay is an ``(H, W, 3)`` array at the model's input size.

    Raises UsageError when no image is given or it cannot be read (the app shows the message).
    """
    from .predict import predict

    if not image_path:
        raise UsageError("no image: upload a photo or pick an example")
    (result,) = predict([image_path], loaded, top_k=TOP_K)
    top = result[f"top{TOP_K}"]
    labels = {entry["label"]: entry["probability"] for entry in top}
    return labels, gradcam_overlay(loaded, image_path, loaded.label_names.index(top[0]["label"]))


def build_demo(loaded: LoadedModel, examples: list[str] | None = None):
    """The Gradio Blocks of the app (not launched): image in, ``gr.Label`` top-5 and Grad-CAM image out.

    The ``/classify`` endpoint takes an image file and returns the label dict and the overlay; a user mistake
    (no image, unreadable file) is shown in the page as a ``gr.Error``.
    """
    gr = require_gradio()

    def run(image_path: str | None):
        try:
            return classify(loaded, image_path)
        except UsageError as e:
            raise gr.Error(str(e)) from e

    with gr.Blocks(title=f"inat_zoo · {model_title(loaded)}", analytics_enabled=False) as demo:
        gr.Markdown(header_markdown(loaded), elem_id="header")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, label="Photo", elem_id="photo")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                labels = gr.Label(num_top_classes=TOP_K, label=f"Top {TOP_K}", elem_id="labels")
                overlay = gr.Image(label="Grad-CAM (top label)", type="numpy", format="png", elem_id="gradcam")
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Test images of the run")
        button.click(run, inputs=[image], outputs=[labels, overlay], api_name=API_NAME)
    return demo


def serve(
    model: str | LoadedModel,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str | None = None,
):
    """Load MODEL, build the app and launch it without blocking; returns the running ``gr.Blocks`` (``.local_url``,
    ``.close()``). CPU unless CUDA is present (or ``device`` says otherwise).

    Raises:
        UsageError: gradio missing, a port outside 1..65535 or in use, a host that does not resolve, a MODEL that
            cannot load, or ``share`` when Gradio's share
            server cannot be reached (the app is closed again then).
    """
    require_gradio()
    from .evaluation import default_device

    check_address(host, port)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device or default_device())
    demo = build_demo(loaded, example_images(loaded))
    gradio_says = io.StringIO()  # Gradio prints several lines when the share link fails: ours is one line
    try:
        with contextlib.redirect_stdout(gradio_says):
            demo.launch(
                server_name=host, server_port=port, share=share, prevent_thread_lock=True, ssr_mode=False, quiet=True
            )
    except OSError as e:  # Gradio's "Cannot find empty port ... GRADIO_SERVER_PORT ... launch()": ours names --port
        logger.debug("gradio: %s", e)
        raise UsageError(_cannot_listen(host, port) or _no_port_message(host, port)) from e
    if share and not demo.share_url:
        logger.debug("gradio: %s", gradio_says.getvalue())
        with contextlib.redirect_stdout(io.StringIO()):
            demo.close()
        raise UsageError("--share: could not reach Gradio's share server (no network?); run without --share")
    return demo


def _no_port_message(host: str, port: int | None) -> str:
    if port is not None:
        return f"port {port} on {host} is in use: choose another --port"
    return f"no free port on {host} from Gradio's default 7860 on: choose one with --port"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo app`` to ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, metavar="P", help="port (default: Gradio's, 7860 or next)")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public link through Gradio")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo app``: serve until Ctrl-C; returns 0."""
    check_address(args.host, args.port)  # before gradio is imported and the model loads
    require_gradio()
    demo = serve(args.model, host=args.host, port=args.port, share=args.share, device=args.device)
    print(f"inat-zoo app: running on {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else ""))
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0
