"""What a model looks at: first-layer filters and activations, guided backprop of CONV5 neurons, Grad-CAM (Captum).

Works for any timm CNN: the first conv is ``pretrained_cfg["first_conv"]`` and the last conv block ("CONV5") is the
last ``feature_info`` level (``stages.4`` for FlexibleCNN, ``layer4`` for ResNets). Captum's guided backprop only
rewrites the backward pass of ``nn.ReLU`` modules; for other activations the result would silently be the plain
gradient, so that case is detected, warned about and titled as plain gradients.

The pictures show test images (one per class, round-robin) or the files given with ``--image``; the images and the
predicted labels come from the one evaluation rule (:func:`inat_zoo.evaluation.model_logits`), so a picture's label is
the prediction ``inat-zoo evaluate`` counts. An ``--image`` that cannot be read is ``inat-zoo: error: <file>:
<reason>`` (exit 2); unreadable test images are skipped and named in a warning.
"""

from __future__ import annotations

import argparse
import logging
import math
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_directory
from .data.decode import format_skipped, read_image_file
from .errors import UsageError
from .evaluate import check_out_dir, default_out_dir
from .evaluation import EvalImages, default_device, load_eval_data, model_logits
from .loading import LoadedModel, load_model
from .plots import RIGHT, WRONG, denormalize, minmax, new_figure, new_grid, save_figure, show_image, suptitle, tile
from .rundir import EXPLAIN_FILES, EXPLAIN_FOLDER, EXPLAIN_IMAGES_FOLDER

logger = logging.getLogger(__name__)

NUM_NEURONS = 10
MAX_FILTERS = 64

# Activation modules live in these modules; nn.ReLU is the only one Captum's guided backprop rewrites.
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me")
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmax2d, nn.LogSoftmax, nn.Softmin)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of the first convolution (timm's ``pretrained_cfg["first_conv"]``, else the first
    ``nn.Conv2d``). Raises :class:`UsageError` if the model has no ``nn.Conv2d``."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    modules = dict(model.named_modules())
    if isinstance(name, str) and isinstance(modules.get(name), nn.Conv2d):
        return name, modules[name]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise UsageError(f"{type(model).__name__} has no nn.Conv2d layer to show filters of")


def last_conv_block(model: nn.Module) -> str:
    """Name of the last conv block (CONV5): the deepest ``feature_info`` level, else the last ``nn.Conv2d``.

    Raises :class:`UsageError` if the model has neither.
    """
    info = getattr(model, "feature_info", None)
    if info:
        name = (info.get_dicts()[-1] if hasattr(info, "get_dicts") else info[-1]).get("module")
        if name and name in dict(model.named_modules()):
            return name
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UsageError(f"{type(model).__name__} has no convolution layer to explain")
    return convs[-1]


def non_relu_activations(model: nn.Module, layer: str) -> list[str]:
    """Activation modules other than ``nn.ReLU`` up to and inside ``layer`` (registration order = forward order).

    Also reports when that part has no ``nn.ReLU`` at all (activations called functionally are invisible to Captum).
    """
    modules = list(model.named_modules())
    cut = max(i for i, (name, _) in enumerate(modules) if name == layer or name.startswith(layer + "."))
    found: set[str] = set()
    relus = 0
    for _, module in modules[: cut + 1]:
        if isinstance(module, nn.ReLU):
            relus += 1
        elif type(module).__module__ in _ACTIVATION_MODULES and not isinstance(module, _NOT_ACTIVATIONS):
            found.add(type(module).__name__)
    if not found and not relus:
        found.add("no nn.ReLU module")
    return sorted(found)


def top_neurons(layer_output: torch.Tensor, k: int = NUM_NEURONS) -> list[tuple[int, int, int]]:
    """The ``k`` most activated units ``(channel, y, x)`` of one image's layer output.

    ``layer_output`` is a float conv map ``(1, C, H, W)`` (only the first image is read) or ``(C, H, W)``; ``y`` and
    ``x`` are cell indices in that map, not input pixels.

    Active units come first, the strongest unit of each channel before a second unit of any channel, so the
    pictures show as many different channels as the layer offers (dead units only when nothing else is left).
    """
    out = layer_output[0] if layer_output.dim() == 4 else layer_output
    _, h, w = out.shape
    flat = out.flatten()
    order = flat.argsort(descending=True).tolist()
    units = [(i // (h * w), (i % (h * w)) // w, i % w) for i in order]
    active = {u for u, i in zip(units, order, strict=True) if flat[i] > 0}
    chosen: list[tuple[int, int, int]] = []
    seen: set[int] = set()
    for unit in units:
        if unit in active and unit[0] not in seen:
            seen.add(unit[0])
            chosen.append(unit)
    chosen += [u for u in units if u in active and u not in chosen]
    chosen += [u for u in units if u not in active]
    return chosen[:k]


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` for input ``x`` (N, C, H, W) float: a detached tensor shaped and typed as that output,
    e.g. (N, C', H', W') float for a conv block. Captum's ``LayerActivation``, which copies the output as the layer
    returns it (an in-place activation after the layer cannot change it)."""
    from captum.attr import LayerActivation

    module = dict(model.named_modules())[layer]
    return LayerActivation(model, module).attribute(x).detach()


def neuron_attributions(
    model: nn.Module, layer: str, image: torch.Tensor, neurons: list[tuple[int, int, int]], guided: bool = True
) -> torch.Tensor:
    """Input attributions (K, C, H, W) float of each neuron ``(c, y, x)`` of ``layer`` for one image (1, C, H, W).

    ``image`` is the normalised float model input; ``neurons`` index ``layer``'s output map (see :func:`top_neurons`).
    ``guided=True`` is guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity: The All
    Convolutional Net") as Captum's NeuronGuidedBackprop, which rewrites only ``nn.ReLU`` modules' backward pass;
    ``False`` the plain gradient (NeuronGradient). The image is
    repeated once per neuron and every copy selects its own neuron, so all K come from one backward pass.
    """
    from captum.attr import NeuronGradient, NeuronGuidedBackprop

    module = dict(model.named_modules())[layer]
    k = len(neurons)
    index = torch.tensor([(i, *unit) for i, unit in enumerate(neurons)], device=image.device).T
    x = image.expand(k, *image.shape[1:]).clone().requires_grad_(True)

    def selector(out: torch.Tensor) -> torch.Tensor:
        return out[tuple(index)]  # copy i -> its own neuron (c_i, y_i, x_i)

    method = NeuronGuidedBackprop(model, module) if guided else NeuronGradient(model, module)
    with warnings.catch_warnings():  # Captum announces its (temporary) ReLU hooks on every call
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
        return method.attribute(x, neuron_selector=selector).detach()


def gradcam(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of ``layer`` for classes ``target``, upsampled to the input's size: (N, 1, H, W) float, >= 0.

    ``x`` is the (N, C, H, W) float normalised model input, ``target`` (N,) int64 class indices. Grad-CAM
    (Selvaraju et al. 2017) via Captum's LayerGradCam with ReLU on the map, bilinearly upsampled; the values are
    unscaled (callers normalise per image for display).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    module = dict(model.named_modules())[layer]
    attr = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear").detach()


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 32) -> torch.Tensor:
    """Integrated gradients from an all-zero input (after normalisation: the mean colour): (N, C, H, W) float.

    ``x`` is the (N, C, H, W) float normalised model input, ``target`` (N,) int64 class indices, ``steps`` the
    Riemann steps of the path integral. Sundararajan et al. 2017 ("Axiomatic Attribution for Deep Networks") via
    Captum's IntegratedGradients.
    """
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(x, target=target, n_steps=steps, internal_batch_size=64).detach()


def _gradient_image(g: torch.Tensor) -> np.ndarray:
    """A gradient (C, H, W) as a picture: standardised around grey, the usual guided-backprop display."""
    g = g.float()
    g = (g - g.mean()) / (g.std() + 1e-8) * 0.15 + 0.5
    return g.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _pick_images(labels: list[int], n: int) -> list[int]:
    """``n`` sample indices taken round-robin over the classes, so the pictures show every class."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in by_class.values()):
        picked += [v[depth] for _, v in sorted(by_class.items()) if depth < len(v)]
        depth += 1
    return picked[:n]


def filters_figure(conv_name: str, conv: nn.Conv2d, activations: torch.Tensor, image: np.ndarray, caption: str):
    """First-layer filters (RGB patches when the input has 3 channels), then the input and the filters' maps.

    ``activations`` is the conv's float output (1, C_out, H', W'), ``image`` the input for display, (H, W, 3) floats
    in [0, 1]; at most the first 64 filters are drawn. Returns the matplotlib figure.

    Each grid is one mosaic (fast to draw); filter ``i`` and map ``i`` sit at the same grid position.
    """
    weights = conv.weight.detach().float().cpu()[:MAX_FILTERS]
    maps = activations[0, :MAX_FILTERS].float().cpu()
    n = weights.shape[0]
    cols = min(8, n)
    rgb = weights.shape[1] == 3
    patches = [minmax(w.permute(1, 2, 0).numpy()) if rgb else minmax(w.mean(0).numpy()) for w in weights]
    fig, axes = new_figure(1, 3, cell=(4.0, 4.0 * math.ceil(n / cols) / cols + 0.6), title_space=0.6)
    kind = "RGB" if rgb else "mean over input channels"
    show_image(axes[0, 0], tile(patches, cols), f"{n} filters of {conv_name} ({kind}), row by row")
    show_image(axes[0, 1], image, f"input ({caption})")
    show_image(axes[0, 2], tile([minmax(m.numpy()) for m in maps], cols), "their activation maps", cmap="viridis")
    for ax in axes[0]:
        ax.title.set_fontsize(8)
    suptitle(fig, f"First-layer filters {tuple(conv.weight.shape)} and what they respond to", fontsize=9)
    return fig


def guided_backprop_figure(
    image: np.ndarray,
    attrs: torch.Tensor,
    neurons: list[tuple[int, int, int]],
    layer: str,
    title: str,
    image_title: str = "input",
    cols: int = 5,
):
    """The input image (left, spanning the rows, larger), then one panel per neuron in a grid (2x5 for 10 neurons),
    each titled with its channel and the unit's position.

    ``image`` is (H, W, 3) floats in [0, 1]; ``attrs`` the (K, C, H, W) float attributions of the K ``neurons``
    (each standardised around grey for display). Returns the matplotlib figure.
    """
    k = len(neurons)
    cols = max(1, min(cols, k))
    rows = math.ceil(k / cols)
    wrapped = textwrap.fill(title, 30 * (cols + 1))
    space = 0.25 + 0.16 * (wrapped.count("\n") + 1)
    wide = min(rows, 2)  # the input is drawn up to twice a neuron's size
    fig, grid = new_grid(rows, cols + 1, cell=(2.2, 2.4), title_space=space, width_ratios=[wide] + [1] * cols)
    show_image(fig.add_subplot(grid[:, 0]), image, image_title)
    for i, (attr, (c, y, x)) in enumerate(zip(attrs, neurons, strict=True)):
        ax = fig.add_subplot(grid[i // cols, 1 + i % cols])
        show_image(ax, _gradient_image(attr), f"{layer} channel {c}\nunit at ({y},{x})")
    suptitle(fig, wrapped, fontsize=9)
    return fig


def overlay_figure(images: np.ndarray, maps: torch.Tensor, titles: list[str], colors: list[str], title: str):
    """Heat maps (N, 1, H, W) float over images (N, H, W, 3) floats in [0, 1], up to 4 per row; returns the figure.

    Each map is clamped at 0 and divided by its own maximum (not min-max scaled).
    """
    n = len(images)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(rows, cols, cell=(2.4, 2.6))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        show_image(ax, images[i], titles[i], color=colors[i])
        heat = maps[i, 0].float().cpu().clamp(min=0).numpy()  # scaled by its max, not min-max: no noise blow-up
        ax.imshow(heat / heat.max() if heat.max() > 0 else heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    suptitle(fig, title, fontsize=9)
    return fig


def _readable(images: EvalImages, order: list[int], n: int) -> list[int]:
    """The first ``n`` indices of ``order`` whose images decode; unreadable ones met on the way are warned about."""
    chosen, skipped = [], []
    for i in order:
        if len(chosen) == n:
            break
        reason = images.reason(i)
        if reason is None:
            chosen.append(i)
        else:
            skipped.append(f"{images.name(i)} ({reason})")
    if skipped:
        logger.warning("skipped %d unreadable image(s): %s", len(skipped), format_skipped(skipped))
    if not chosen:
        raise UsageError(f"none of the {len(order)} images of the {images.split} split could be read")
    return chosen


@dataclass
class _Subjects:
    """The images being explained, the evaluation's predictions for them, and how the pictures label them."""

    x: torch.Tensor  # (N, C, H, W) float32 model input, on the model's device
    shown: np.ndarray  # (N, H, W, 3) the same images for display, floats in [0, 1]
    preds: torch.Tensor  # (N,) int64 predicted classes, on the CPU
    captions: list[str]  # "true: ...\npred: ... (87%)", or the prediction alone for unlabelled files
    colors: list[str | None]  # RIGHT / WRONG, None for unlabelled files
    subject: str  # how titles name the first image


def _images_to_explain(
    loaded: LoadedModel, data_root: str | Path | None, images: int, image_files: Sequence[str | Path] | None
) -> tuple[EvalImages, list[int], list[str]]:
    """(source, picked indices, class names): the given files, else ``images`` readable test images round-robin."""
    if image_files:
        source = EvalImages([str(p) for p in image_files], loaded.data_config, split="images")
        return source, list(range(len(source))), list(loaded.label_names)
    data = load_eval_data(loaded, data_root, "test")
    picked = _readable(data.images, _pick_images(data.labels, len(data.labels)), images)
    return data.images, picked, data.class_names


def _predict_subjects(loaded: LoadedModel, source: EvalImages, picked: list[int], names: list[str]) -> _Subjects:
    """The picked images through the one evaluation rule: their predictions, captions and frame colours."""
    chosen = EvalImages(
        [source.value(i) for i in picked], loaded.data_config, [source.labels[i] for i in picked], source.split
    )
    logits, _ok = model_logits(loaded.model, chosen, progress=False, desc="explain")  # the evaluation's predictions
    conf, preds = logits.softmax(1).max(1)
    x = torch.stack([chosen.pixels(i) for i in range(len(chosen))]).to(next(loaded.model.parameters()).device)
    labels = chosen.labels
    captions, colors = [], []
    for i, label in enumerate(labels):
        prediction = f"pred: {names[int(preds[i])]} ({float(conf[i]):.0%})"
        captions.append(prediction if label < 0 else f"true: {names[label]}\n{prediction}")
        colors.append(None if label < 0 else (RIGHT if label == int(preds[i]) else WRONG))
    subject = "the image" if labels[0] < 0 else f"an image of {names[labels[0]]}"
    shown = denormalize(x, loaded.data_config["mean"], loaded.data_config["std"])
    return _Subjects(x, shown, preds, captions, colors, subject)


def _draw_filters(model: nn.Module, subjects: _Subjects):
    """filters.png: the first convolution's filters and their activation maps for the first image."""
    conv_name, conv = first_conv(model)
    activations = layer_output(model, conv_name, subjects.x[:1])
    caption = subjects.captions[0].replace("\n", ", ")
    return filters_figure(conv_name, conv, activations, subjects.shown[0], caption)


def _draw_guided_backprop(loaded: LoadedModel, layer: str, subjects: _Subjects):
    """guided_backprop.png: the top neurons of ``layer`` for the first image (plain gradients, said so, without
    ``nn.ReLU`` activations)."""
    model = loaded.model
    others = non_relu_activations(model, layer)
    neurons = top_neurons(layer_output(model, layer, subjects.x[:1]), NUM_NEURONS)
    attrs = neuron_attributions(model, layer, subjects.x[:1], neurons, guided=True)
    if others:
        logger.warning(
            "guided backprop needs nn.ReLU activations, but %s uses %s before %s: Captum falls back to plain "
            "gradients there, so guided_backprop.png shows (mostly) plain gradients",
            loaded.ref,
            ", ".join(others),
            layer,
        )
        title = (
            f"Plain gradients, NOT guided ({', '.join(others)} instead of ReLU): {layer} neurons, {subjects.subject}"
        )
    else:
        title = f"Guided backprop of {len(neurons)} {layer} (CONV5) neurons, {subjects.subject}"
    image_title = f"input\n{subjects.captions[0]}"
    return guided_backprop_figure(subjects.shown[0], attrs, neurons, layer, title, image_title=image_title)


def _draw_attribution_maps(model: nn.Module, layer: str, subjects: _Subjects, integrated: bool) -> dict[str, Any]:
    """gradcam.png (and integrated_gradients.png): heat maps for the predicted class over every image."""
    target = subjects.preds.to(subjects.x.device)
    cams = gradcam(model, layer, subjects.x, target)
    shown, captions, colors = subjects.shown, subjects.captions, subjects.colors
    title = f"Grad-CAM of {layer} for the predicted class"
    figures = {"gradcam": overlay_figure(shown, cams, captions, colors, title)}
    if integrated:
        ig = integrated_gradients(model, subjects.x, target).abs().sum(1, keepdim=True)
        title = "Integrated gradients (|attribution|, baseline: the mean colour)"
        figures["integrated_gradients"] = overlay_figure(shown, ig, captions, colors, title)
    return figures


def explain(
    model_ref: str | LoadedModel,
    data_root: str | Path | None = None,
    images: int = 8,
    *,
    out_dir: str | Path | None = None,
    integrated: bool = False,
    device: str | None = None,
    image_files: Sequence[str | Path] | None = None,
) -> dict[str, Path]:
    """Write filters.png, guided_backprop.png and gradcam.png (+ integrated_gradients.png) for test images, or for
    ``image_files`` (then no data is loaded and the pictures show predictions only).

    The images and the predicted labels come from the one evaluation rule (:func:`inat_zoo.evaluation.model_logits`).
    Returns ``{figure name: path}``. Raises UsageError for ``images < 1``, an unreadable ``image_files`` entry
    (before the model loads), no readable test image, or a model without a convolution.
    """
    if images < 1:
        raise UsageError(f"--images must be at least 1, got {images}")
    if image_files:
        for path in image_files:
            read_image_file(path)  # named on the command line: must be readable, checked before the model loads
    loaded = model_ref if isinstance(model_ref, LoadedModel) else load_model(model_ref, device or default_device())
    source, picked, names = _images_to_explain(loaded, data_root, images, image_files)
    folder = EXPLAIN_IMAGES_FOLDER if image_files else EXPLAIN_FOLDER
    out = Path(out_dir) if out_dir is not None else default_out_dir(loaded, folder)
    check_out_dir(out, EXPLAIN_FILES)

    subjects = _predict_subjects(loaded, source, picked, names)
    figures: dict[str, Any] = {"filters": _draw_filters(loaded.model, subjects)}
    layer = last_conv_block(loaded.model)
    figures["guided_backprop"] = _draw_guided_backprop(loaded, layer, subjects)
    figures.update(_draw_attribution_maps(loaded.model, layer, subjects, integrated))

    with atomic_directory(out, overwrite=True) as tmp:
        for name, fig in figures.items():
            save_figure(fig, tmp / f"{name}.png")
    paths = {name: out / f"{name}.png" for name in figures}
    logger.info("wrote %s", out)
    return paths


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo explain`` to ``parser``."""
    parser.add_argument("model", metavar="MODEL", help="run directory, local-dir:PATH, hf-hub:ORG/NAME or timm name")
    parser.add_argument("--data-root", metavar="DIR", help="image folder (default: the run's recipe data.root)")
    parser.add_argument("--images", type=int, default=8, metavar="N", help="test images for Grad-CAM (default 8)")
    parser.add_argument(
        "--image",
        action="append",
        metavar="FILE",
        help="explain this image file instead of test images (repeat for several; --images is then ignored)",
    )
    parser.add_argument("--integrated-gradients", action="store_true", help="also write integrated_gradients.png")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: <run>/explain, with --image <run>/explain_images)"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo explain`` and print the path of each picture written; returns 0."""
    paths = explain(
        args.model,
        args.data_root,
        args.images,
        out_dir=args.out,
        integrated=args.integrated_gradients,
        device=args.device,
        image_files=args.image,
    )
    for path in paths.values():
        print(path)
    return 0


__all__ = [
    "explain",
    "first_conv",
    "gradcam",
    "last_conv_block",
    "neuron_attributions",
    "non_relu_activations",
    "top_neurons",
]
