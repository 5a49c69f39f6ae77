"""The model card of a published run, rendered from ``model_cards/inat_zoo_card.md`` with huggingface_hub.

The metadata (``library_name: timm``, tags, license, datasets, ``base_model``, ``model-index``) is built with
``ModelCardData``/``EvalResult`` so the Hub shows the test accuracy on the model page and links the base model.
The tags are set explicitly: timm's own card generator adds ``transformers``, which these models are not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .errors import UsageError
from .hub_ids import hub_dataset_id
from .resources import bundled_path

if TYPE_CHECKING:
    from .hub import RunFiles

CARD_TEMPLATE = bundled_path("model_cards/inat_zoo_card.md")
CARD_TAGS = ["image-classification", "timm", "inat_zoo", "inaturalist"]
INAT12K_CLASSES = (
    "Amphibia",
    "Animalia",
    "Arachnida",
    "Aves",
    "Fungi",
    "Insecta",
    "Mammalia",
    "Mollusca",
    "Plantae",
    "Reptilia",
)
SYNTHETIC_PREFIX = "synth_"  # class names of inat_zoo.data.sample
_IMAGE_TITLES = {
    "confusion_matrix": ("Confusion matrix", "Rows: true class, columns: predicted class, on the {split} split."),
    "predictions_grid": ("Predictions", "Three {split} images per class; wrong predictions in red."),
    "filters": ("First-layer filters", "The first convolution's filters and their activation maps for one image."),
    "guided_backprop": (
        "Guided backpropagation",
        "What excites ten neurons (channels) of the last convolutional block (CONV5).",
    ),
    "gradcam": ("Grad-CAM", "Where the last convolutional block looks for the predicted class."),
    "integrated_gradients": ("Integrated gradients", "Pixel attributions for the predicted class."),
}
_FREEZE_TEXT = {
    "none": "All weights were trained.",
    "head": "Only the classifier head was trained; the backbone kept its weights (and BatchNorm statistics).",
}


def dataset_info(label_names: Sequence[str], recipe: dict[str, Any]) -> dict[str, Any]:
    """Which data the run used, judged from its class names: the real iNaturalist 12K, the synthetic sample, or other.

    Only a Hub dataset id (a ``data.root`` that is ``owner/name`` and not a local path) goes into the card's
    ``datasets`` metadata, so the card never links a dataset that does not exist.
    """
    root = str((recipe.get("data") or {}).get("root") or "")
    hub_id = hub_dataset_id(root)  # the bare id (no hf-hub:), by the one rule of inat_zoo.hub_ids
    if all(name.startswith(SYNTHETIC_PREFIX) for name in label_names):
        return {
            "synthetic": True,
            "id": "inat_zoo-synthetic-sample",
            "title": "the inat_zoo synthetic sample",
            "hub_id": None,
        }
    if tuple(label_names) == INAT12K_CLASSES:
        return {
            "synthetic": False,
            "id": hub_id or "inaturalist_12K",
            "title": "iNaturalist 12K (nature_12K)",
            "hub_id": hub_id,
        }
    title = f"`{hub_id or Path(root).name or 'custom data'}`"
    return {"synthetic": False, "id": hub_id or "custom", "title": title, "hub_id": hub_id}


def base_model_id(recipe: dict[str, Any]) -> str | None:
    """The Hub id of the pretrained weights a fine-tune started from (only ids timm's registry knows exist)."""
    model = recipe.get("model") or {}
    name = str(model.get("name") or "")
    if not model.get("pretrained"):
        return None
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:") :].split("@")[0]
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return hub_id if hub_id and "/" in hub_id and not hub_id.endswith("/") else None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, tuple)):
        return f"`{json.dumps(value)}`"
    return "–" if value is None else str(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def _hyperparameters(recipe: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("seed", _fmt(recipe.get("seed")))]
    for key, value in (recipe.get("train") or {}).items():
        rows.append((f"train.{key}", _fmt(value)))
    data = recipe.get("data") or {}
    for key in ("image_size", "val_fraction"):
        if key in data:
            rows.append((f"data.{key}", _fmt(data[key])))
    for key, value in (data.get("augment") or {}).items():
        rows.append((f"data.augment.{key}", _fmt(value)))
    if "world_size" in metrics:
        rows.append(("processes (world size)", _fmt(metrics["world_size"])))
    return rows


def _ordered(paths: Sequence[str]) -> list[str]:
    """Known pictures in the order the card tells the story (filters before neurons before Grad-CAM), then others."""
    known = list(_IMAGE_TITLES)
    return sorted(paths, key=lambda p: (known.index(Path(p).stem) if Path(p).stem in known else len(known), p))


def _image_entry(path: str, split: str = "test") -> dict[str, str]:
    stem = Path(path).stem
    title, caption = _IMAGE_TITLES.get(stem, (stem.replace("_", " ").capitalize(), ""))
    return {"title": title, "caption": caption.format(split=split), "path": path}


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def eval_results(run: RunFiles, dataset: dict[str, Any]) -> list[EvalResult]:
    """``model-index`` entries: test accuracy (as in metrics.json) and, when evaluated on test, macro F1."""
    from .hub import _test_accuracy

    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset["id"],
        "dataset_name": dataset["title"].strip("`"),
        "dataset_split": "test",
    }
    results = [
        EvalResult(
            metric_type="accuracy",
            metric_name="Top-1 accuracy",
            metric_value=_test_accuracy(run.metrics, run.eval_metrics),
            **common,
        )
    ]
    ev = run.eval_metrics or {}
    if ev.get("split", "test") == "test" and ev.get("macro_f1") is not None:
        results.append(
            EvalResult(
                metric_type="f1",
                metric_name="Macro F1",
                metric_value=ev["macro_f1"],
                metric_args={"average": "macro"},
                **common,
            )
        )
    return results


def build_model_card(
    run: RunFiles,
    repo_id: str,
    *,
    license: str = "apache-2.0",
    eval_images: Sequence[str] = (),
    explain_images: Sequence[str] = (),
    curves: str | None = None,
    template: str | Path = CARD_TEMPLATE,
) -> ModelCard:
    """Render the card of ``run`` as published under ``repo_id``; image paths are relative to the Hub folder."""
    from . import __version__

    if not Path(template).is_file():
        raise UsageError(f"model card template {template} not found")
    config = run.config
    pretrained_cfg = config["pretrained_cfg"]
    recipe = run.recipe
    model_recipe = recipe.get("model") or {}
    metrics = run.metrics
    architecture = config["architecture"]
    labels = run.label_names
    dataset = dataset_info(labels, recipe)
    base_model = base_model_id(recipe)
    name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=list(CARD_TAGS) + (["synthetic-data"] if dataset["synthetic"] else []),
        license=license,
        datasets=[dataset["hub_id"]] if dataset["hub_id"] else None,
        base_model=base_model,
        metrics=["accuracy"] + (["f1"] if run.eval_metrics and run.eval_metrics.get("macro_f1") is not None else []),
        model_name=name,
        eval_results=eval_results(run, dataset),
    )
    freeze = str(model_recipe.get("freeze") or metrics.get("freeze") or "none")
    if freeze.startswith("until:"):
        freeze_text = (
            f"Everything up to and including `{freeze[6:]}` was frozen (pretrained weights and BatchNorm statistics "
            "kept); the later stages and the head were trained."
        )
    else:
        freeze_text = _FREEZE_TEXT.get(freeze, "")
    results = []
    for split in ("validation", "test"):
        block = metrics.get(split) or {}
        if block:
            results.append(
                {
                    "split": split,
                    "accuracy": _pct(block.get("accuracy")),
                    "loss": _fmt(round(block["loss"], 4)) if isinstance(block.get("loss"), float) else "–",
                    "num_samples": _fmt(block.get("num_samples")),
                }
            )
    ev = run.eval_metrics or {}
    result_images = [_image_entry(p, str(ev.get("split", "test"))) for p in _ordered(eval_images)]
    if curves:
        result_images.append({"title": "Training curves", "caption": "", "path": curves})
    input_size = pretrained_cfg["input_size"]
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        synthetic=dataset["synthetic"],
        real_inat=tuple(labels) == INAT12K_CLASSES,
        dataset_title=dataset["title"],
        origin=f"inat_zoo {__version__}",
        architecture=architecture,
        num_classes=config["num_classes"],
        model_args=config.get("model_args") or {},
        params=f"{metrics['params']:,}" if isinstance(metrics.get("params"), int) else "–",
        trainable_params=f"{metrics['trainable_params']:,}"
        if isinstance(metrics.get("trainable_params"), int)
        else "–",
        input_size=f"{input_size[1]}x{input_size[2]}",
        mean=_fmt(list(pretrained_cfg["mean"])),
        std=_fmt(list(pretrained_cfg["std"])),
        interpolation=pretrained_cfg.get("interpolation", "bilinear"),
        crop_pct=_fmt(pretrained_cfg.get("crop_pct")),
        label_names=labels,
        base_model=base_model,
        freeze=freeze,
        freeze_explanation=freeze_text,
        unfreeze=model_recipe.get("unfreeze") or [],
        hyperparameters=_hyperparameters(recipe, metrics),
        results=results,
        macro_f1=_pct(ev["macro_f1"])
        if ev.get("split", "test") == "test" and ev.get("macro_f1") is not None
        else None,
        best_epoch=_fmt(metrics.get("best_epoch")),
        epochs=_fmt(metrics.get("epochs")),
        train_time=_duration(metrics.get("train_time_s")),
        world_size=_fmt(metrics.get("world_size", 1)),
        val_percent=_fmt(round(100 * float((recipe.get("data") or {}).get("val_fraction", 0.2)), 1)),
        test_samples=_fmt((metrics.get("test") or {}).get("num_samples")),
        result_images=result_images,
        explain_images=[_image_entry(p) for p in _ordered(explain_images)],
        needs_inat_zoo=architecture.startswith("inat_"),
    )


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch (train and validation) from history.jsonl, as one PNG; the kept epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [record.get("epoch", i) for i, record in enumerate(history)]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        for split in ("train", "val"):
            values = [record.get(f"{split}_{metric}") for record in history]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if isinstance(v, (int, float))]
            if points:
                label = "train" if split == "train" else "validation"
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.savefig(path, format="png")
    return Path(path)
