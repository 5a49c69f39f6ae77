"""The model card of a published run, rendered from ``model_cards/inat_zoo_card.md`` with huggingface_hub.

The metadata (``library_name: timm``, tags, license, datasets, ``base_model``, ``model-index``) is built with
``ModelCardData``/``EvalResult`` so the Hub shows the test accuracy on the model page and links the base model.
The tags are set explicitly: timm's own card generator adds ``transformers``, which these models are not.

Every number on the card names the evaluation it came from. The test numbers (accuracy, top-k, macro F1, loss, image
count, in the text and in ``model-index``) all come from ONE result of :func:`inat_zoo.evaluation.evaluate_split`
(:func:`test_evaluation`): training's final test pass (``metrics.json``'s ``test`` block), or, for a run written
before that pass computed macro F1, ``inat-zoo evaluate`` (``eval/metrics.json``). Accuracy and F1 are never taken
from two different evaluations. The validation row is the training loop's own measurement at the best epoch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .errors import UsageError
from .hub_ids import hub_dataset_id
from .recipe_schema import FreezeStrategy
from .resources import bundled_path
from .rundir import EVAL_FOLDER, METRICS_FILE, PUBLISHED_EVAL_METRICS_FILE, evaluate_test_metrics, trainer_test_metrics

if TYPE_CHECKING:
    from .rundir import RunFiles

logger = logging.getLogger(__name__)

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
MOST_CONFUSED = 5  # rows of the card's most-confused table
_IMAGE_TITLES = {
    "confusion_matrix": ("Confusion matrix", "Rows: true class, columns: predicted class, on the {split} split."),
    "predictions_grid": ("Predictions", "Three {split} images per class; wrong predictions in red."),
    "top_losses": ("Top losses", "The {split} images with the highest loss: true and predicted class, probabilities."),
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
    if model.get("pretrained") is not True:  # false, or a local weights PATH: no Hub id to name
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
        if key != "distill":  # its own line, the teacher's local path cut to a name (_distill)
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


def _image_entry(path: str, split: str = "test", source: str | None = None) -> dict[str, str]:
    stem = Path(path).stem
    title, caption = _IMAGE_TITLES.get(stem, (stem.replace("_", " ").capitalize(), ""))
    caption = caption.format(split=split)
    if source:
        caption = f"{caption} From {source}.".strip()
    return {"title": title, "caption": caption, "path": path}


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


TRAINER_TEST = f"training's final test pass (`{METRICS_FILE}`)"
EVALUATE_TEST = f"`inat-zoo evaluate` (`{PUBLISHED_EVAL_METRICS_FILE}`)"


def test_evaluation(run: RunFiles) -> tuple[dict[str, Any], str] | None:
    """The one evaluation result the card's test numbers come from, and how the card names it.

    Training's final test pass when it is a full evaluation (it has macro F1: every run of this version), else
    ``inat-zoo evaluate``'s test result, else the trainer's accuracy alone (a run from before the one evaluation).
    """
    test, ev = trainer_test_metrics(run.metrics), evaluate_test_metrics(run.eval_metrics)
    if test.get("accuracy") is not None and test.get("macro_f1") is not None:
        if ev is not None and any(ev.get(k) != test.get(k) for k in ("accuracy", "num_samples", "macro_f1")):
            logger.warning(
                "%s/%s (accuracy %s on %s images) is not the run's test result (accuracy %s on %s "
                "images): the card reports %s's; the evaluation pictures come from %s/",
                EVAL_FOLDER,
                METRICS_FILE,
                ev.get("accuracy"),
                ev.get("num_samples"),
                test["accuracy"],
                test.get("num_samples"),
                METRICS_FILE,
                EVAL_FOLDER,
            )
        return test, TRAINER_TEST
    if ev is not None:
        return ev, EVALUATE_TEST
    if test.get("accuracy") is not None:
        return test, TRAINER_TEST
    return None


def _rule_text(block: dict[str, Any]) -> str | None:
    rule = block.get("evaluation")
    if not isinstance(rule, dict):
        return None
    return (
        f"{rule.get('decode', '')}; {rule.get('transform', '')}; {rule.get('precision', '')}, "
        f"batches of {rule.get('batch_size', '?')} (rule `{rule.get('rule', '?')}`)"
    )


def _top_k(block: dict[str, Any]) -> tuple[int | None, float | None]:
    k = block.get("top_k")
    if isinstance(k, int) and isinstance(block.get(f"top{k}_accuracy"), (int, float)):
        return k, block[f"top{k}_accuracy"]
    return None, None


def eval_results(run: RunFiles, dataset: dict[str, Any]) -> list[EvalResult]:
    """``model-index`` entries: test accuracy and, when that evaluation has it, its macro F1 (never mixed)."""
    found = test_evaluation(run)
    if found is None:
        return []
    block, _source = found
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
            metric_value=block["accuracy"],
            **common,
        )
    ]
    if block.get("macro_f1") is not None:
        results.append(
            EvalResult(
                metric_type="f1",
                metric_name="Macro F1",
                metric_value=block["macro_f1"],
                metric_args={"average": "macro"},
                **common,
            )
        )
    return results


def _results(run: RunFiles) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The rows of the results table (each naming its evaluation) and the notes on the test evaluation."""
    metrics = run.metrics
    rows: list[dict[str, str]] = []
    val = metrics.get("validation") or {}
    if val:
        best = metrics.get("best_epoch")
        rows.append(
            {
                "split": "validation",
                "accuracy": _pct(val.get("accuracy")),
                "top_k": "–",
                "macro_f1": "–",
                "loss": _loss(val.get("loss")),
                "num_samples": _fmt(val.get("num_samples")),
                "source": f"the training loop at epoch {_fmt(best)} (selection metric, training data pipeline)",
            }
        )
    notes: dict[str, Any] = {"test_source": None, "test_rule": None, "absent_classes": [], "skipped": 0}
    found = test_evaluation(run)
    if found is not None:
        block, source = found
        k, top = _top_k(block)
        rows.append(
            {
                "split": "test",
                "accuracy": _pct(block.get("accuracy")),
                "top_k": f"{_pct(top)} (top-{k})" if k else "–",
                "macro_f1": _pct(block.get("macro_f1")),
                "loss": _loss(block.get("loss")),
                "num_samples": _fmt(block.get("num_samples")),
                "source": source,
            }
        )
        tta_row = _tta_row(run)
        rows += [tta_row] if tta_row else []
        notes = {
            "test_source": source,
            "test_rule": _rule_text(block),
            "absent_classes": list(block.get("absent_classes") or []),
            "skipped": len(block.get("skipped") or {}),
            "test_samples": block.get("num_samples"),
        }
    return rows, notes


def _tta_row(run: RunFiles) -> dict[str, str] | None:
    """The results row of ``inat-zoo evaluate --tta`` (eval/metrics.json ``tta``), beside the plain test row."""
    tta = (evaluate_test_metrics(run.eval_metrics) or {}).get("tta")
    if not isinstance(tta, dict) or not isinstance(tta.get("accuracy"), (int, float)):
        return None
    k, top = _top_k(tta)
    mode = tta.get("mode", "?")
    return {
        "split": f"test, TTA ({mode})",
        "accuracy": _pct(tta["accuracy"]),
        "top_k": f"{_pct(top)} (top-{k})" if k else "–",
        "macro_f1": _pct(tta.get("macro_f1")),
        "loss": _loss(tta.get("loss")),
        "num_samples": _fmt(tta.get("num_samples")),
        "source": f"`inat-zoo evaluate --tta {mode}` (`{PUBLISHED_EVAL_METRICS_FILE}`): mean softmax over the views",
    }


def _error_analysis(run: RunFiles) -> dict[str, Any]:
    """The template's fields from ``inat-zoo evaluate``'s test result: the TTA mode and the most-confused pairs."""
    ev = evaluate_test_metrics(run.eval_metrics) or {}
    tta = ev.get("tta") if _tta_row(run) else None
    return {"tta_mode": (tta or {}).get("mode"), "most_confused": list(ev.get("most_confused") or [])[:MOST_CONFUSED]}


def _loss(value: Any) -> str:
    return _fmt(round(value, 4)) if isinstance(value, float) else "–"


def _eval_pictures_source(run: RunFiles) -> str:
    """How the card names the evaluation behind the eval/ pictures."""
    ev = run.eval_metrics or {}
    text = "`inat-zoo evaluate`"
    if isinstance(ev.get("accuracy"), (int, float)):
        found = test_evaluation(run)
        keys = ("accuracy", "num_samples", "macro_f1", "loss")
        same = found is not None and ev.get("split", "test") == "test"
        same = same and all(ev.get(k) == found[0].get(k) for k in keys)
        text += f" (accuracy {_pct(ev['accuracy'])} on {_fmt(ev.get('num_samples'))} images"
        text += ": the evaluation of the test row)" if same else ")"
    return text


def _card_data(
    run: RunFiles, repo_id: str, license: str, dataset: dict[str, Any], base_model: str | None
) -> ModelCardData:
    """The card's metadata: library, tags, license, datasets, base model and ``model-index``."""
    # eval_results is looked up twice, as before the split (each look-up repeats test_evaluation's mismatch warning)
    has_f1 = any(result.metric_type == "f1" for result in eval_results(run, dataset))
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=list(CARD_TAGS) + (["synthetic-data"] if dataset["synthetic"] else []),
        license=license,
        datasets=[dataset["hub_id"]] if dataset["hub_id"] else None,
        base_model=base_model,
        metrics=["accuracy"] + (["f1"] if has_f1 else []),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(run, dataset),
    )


def _freeze_explanation(freeze: str) -> str:
    """One sentence on what a ``model.freeze`` strategy kept frozen ("" for one the recipe schema does not know)."""
    try:
        strategy = FreezeStrategy.parse(freeze)
    except ValueError:
        return ""
    if strategy.kind == "until":
        return (
            f"Everything up to and including `{strategy.stage}` was frozen (pretrained weights and BatchNorm "
            "statistics kept); the later stages and the head were trained."
        )
    return _FREEZE_TEXT[strategy.kind]


def _result_images(run: RunFiles, eval_images: Sequence[str], curves: str | None) -> list[dict[str, str]]:
    """The evaluation pictures (each naming the evaluation behind it), then the training curves."""
    split = str((run.eval_metrics or {}).get("split", "test"))
    pictures_source = _eval_pictures_source(run) if run.eval_metrics else None
    images = [_image_entry(path, split, pictures_source) for path in _ordered(eval_images)]
    if curves:
        images.append({"title": "Training curves", "caption": "", "path": curves})
    return images


def _model_fields(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The template's fields on the model itself: architecture, sizes and its input preprocessing."""
    pretrained_cfg = config["pretrained_cfg"]
    input_size = pretrained_cfg["input_size"]

    def count(key: str) -> str:
        return f"{metrics[key]:,}" if isinstance(metrics.get(key), int) else "–"

    return {
        "architecture": config["architecture"],
        "num_classes": config["num_classes"],
        "model_args": config.get("model_args") or {},
        "params": count("params"),
        "trainable_params": count("trainable_params"),
        "input_size": f"{input_size[1]}x{input_size[2]}",
        "mean": _fmt(list(pretrained_cfg["mean"])),
        "std": _fmt(list(pretrained_cfg["std"])),
        "interpolation": pretrained_cfg.get("interpolation", "bilinear"),
        "crop_pct": _fmt(pretrained_cfg.get("crop_pct")),
        "needs_inat_zoo": config["architecture"].startswith("inat_"),
    }


def _distill(distill: dict[str, Any] | None) -> dict[str, Any] | None:
    """``train.distill`` as the card shows it: a local teacher (run directory, ``local-dir:``) by its folder's name
    only, as the published recipe shows local folders; an ``hf-hub:`` teacher as is."""
    from .rundir import MODEL_DIR

    if not distill or str(distill.get("teacher", "")).startswith("hf-hub:"):
        return distill
    folder = Path(str(distill.get("teacher", "")).removeprefix("local-dir:"))
    return {**distill, "teacher": (folder.parent if folder.name == MODEL_DIR else folder).name}


def _training_fields(run: RunFiles) -> dict[str, Any]:
    """The template's fields on how the run was trained: freezing, hyperparameters, epochs, time, processes."""
    recipe, metrics = run.recipe, run.metrics
    model_recipe = recipe.get("model") or {}
    freeze = str(model_recipe.get("freeze") or metrics.get("freeze") or "none")
    return {
        "freeze": freeze,
        "freeze_explanation": _freeze_explanation(freeze),
        "unfreeze": model_recipe.get("unfreeze") or [],
        "distill": _distill((recipe.get("train") or {}).get("distill")),
        "hyperparameters": _hyperparameters(recipe, metrics),
        "best_epoch": _fmt(metrics.get("best_epoch")),
        "epochs": _fmt(metrics.get("epochs")),
        "train_time": _duration(metrics.get("train_time_s")),
        "world_size": _fmt(metrics.get("world_size", 1)),
        "val_percent": _fmt(round(100 * float((recipe.get("data") or {}).get("val_fraction", 0.2)), 1)),
    }


def build_model_card(
    run: RunFiles,
    repo_id: str,
    *,
    license: str = "apache-2.0",
    eval_images: Sequence[str] = (),
    explain_images: Sequence[str] = (),
    curves: str | None = None,
    template: str | Path = CARD_TEMPLATE,
    onnx: dict[str, Any] | None = None,
    space_id: str | None = None,
) -> ModelCard:
    """Render the card of ``run`` as published under ``repo_id``; image paths are relative to the Hub folder.

    ``onnx`` (``{"file", "opset", "max_abs_diff"}``) adds the ONNX file's section, ``space_id`` a link to its Space.

    Raises UsageError when ``template`` is not a file.
    """
    from . import __version__

    if not Path(template).is_file():
        raise UsageError(f"model card template {template} not found")
    labels = run.label_names
    dataset = dataset_info(labels, run.recipe)
    base_model = base_model_id(run.recipe)
    card_data = _card_data(run, repo_id, license, dataset, base_model)
    training = _training_fields(run)
    results, notes = _results(run)
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        synthetic=dataset["synthetic"],
        real_inat=tuple(labels) == INAT12K_CLASSES,
        dataset_title=dataset["title"],
        origin=f"inat_zoo {__version__}",
        label_names=labels,
        base_model=base_model,
        results=results,
        test_source=notes["test_source"],
        test_rule=notes["test_rule"],
        absent_classes=notes["absent_classes"],
        skipped_images=notes["skipped"],
        test_samples=_fmt(notes.get("test_samples")),
        result_images=_result_images(run, eval_images, curves),
        **_error_analysis(run),
        explain_images=[_image_entry(p) for p in _ordered(explain_images)],
        onnx=onnx,
        space_id=space_id,
        **_model_fields(run.config, run.metrics),
        **training,
    )
