"""The one evaluation of a model: the images, their logits and the metrics, by one rule.

:func:`evaluate_split` is the only code that turns a model and a split into test numbers: training's final test pass
(``metrics.json``'s ``test`` block), ``inat-zoo evaluate`` (``eval/metrics.json``, written by
:mod:`inat_zoo.evaluate`) and so the model card all report its output, field for field. ``predict`` and the labels on
the ``explain`` pictures go through the same :func:`model_logits`, and so do the views of test-time augmentation
(:mod:`inat_zoo.tta`, reported beside these numbers, never instead of them). The rule (recorded in every result's
``evaluation`` field):

- the original image files of the split (never the training pipeline's resized copies or reduced-scale decodes),
  decoded by :func:`inat_zoo.data.decode.read_rgb`: full resolution, EXIF orientation, RGB;
- the evaluation transform of the model's own timm data config (``resolve_model_data_config``: resize to
  ``size / crop_pct``, centre crop, normalise), exactly what a timm user gets;
- float32 throughout (no autocast, TF32 off for the duration), the exported model as ``timm.create_model`` loads it,
  in eval mode;
- batches of :data:`EVAL_BATCH_SIZE` in dataset order; under several processes each rank scores whole batches and
  ``accelerator.gather_for_metrics`` reassembles the split, every image once;
- images that cannot be decoded are skipped and named (``skipped``), never a crash mid-run;
- metrics from one confusion matrix, so accuracy, per-class scores and the matrix can never disagree. Macro averages
  are over the classes present among the split's true labels (a class with no test image is named in a warning and
  in ``absent_classes``; its per-class row keeps support 0).

The same model, data and device give the same numbers to the last digit whichever command runs it. A different
device (a run trained on GPU, evaluated on CPU) can move the last digits of the loss.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.decode import UnreadableImage, describe, format_skipped, read_rgb
from .errors import UsageError
from .loading import LoadedModel, load_model, read_run_recipe
from .rundir import RECIPE_FILE

# the evaluation's warnings (skipped images, absent classes) keep the logger name they had before this module was
# split out of inat_zoo.evaluate, so log filters and captures on that name still see them
logger = logging.getLogger("inat_zoo.evaluate")

SPLITS = ("test", "validation", "train")
EVAL_BATCH_SIZE = 64  # the batch size of the one evaluation (training's final test pass uses it too)
MAX_TOP_K = 5
EVAL_RULE = "inat_zoo-eval-1"  # bump when the evaluation rule below changes


def evaluation_rule(batch_size: int = EVAL_BATCH_SIZE) -> dict[str, Any]:
    """What produced a result: stored as its ``evaluation`` field and named on the model card."""
    return {
        "rule": EVAL_RULE,
        "decode": "original files, full resolution, EXIF orientation, RGB",
        "transform": "timm evaluation transform of the model's data config (resize, centre crop, normalise)",
        "precision": "float32",
        "batch_size": batch_size,
    }


def top_k_key(k: int) -> str:
    """The name of the top-k accuracy field: ``top5_accuracy``, or ``top2_accuracy`` for a 2-class model."""
    return f"top{k}_accuracy"


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------- the images
def _input_hw(data_config: Mapping[str, Any]) -> tuple[int, int]:
    size = data_config["input_size"]
    return (size, size) if isinstance(size, int) else (int(size[-2]), int(size[-1]))


class EvalImages(torch.utils.data.Dataset):
    """Images decoded by the one rule and put through the model's evaluation transform.

    ``source`` is a ``datasets`` split (its ``image`` column, read undecoded) or a list of image values (paths,
    ``{"bytes", "path"}``, PIL images). Items are ``{"pixel_values", "label", "index", "ok"}``; an image that cannot
    be decoded gives ``ok == 0`` and zero pixels, so a batch never fails and the caller names the file. A plain
    module-level class: it pickles into DataLoader workers.
    """

    def __init__(
        self,
        source: Any,
        data_config: Mapping[str, Any],
        labels: Sequence[int] | None = None,
        split: str = "images",
    ):
        from .data import create_image_transform

        if isinstance(source, (list, tuple)):
            self._values: list | None = list(source)
            self._split = None
        else:
            import datasets

            if "image" not in source.column_names:
                raise UsageError(f"dataset needs an 'image' column, has {source.column_names}")
            split_ds = source.select_columns(["image"])
            feature = split_ds.features["image"]
            if isinstance(feature, datasets.Image) and feature.decode:
                split_ds = split_ds.cast_column("image", datasets.Image(decode=False))
            self._values, self._split = None, split_ds
        n = len(self._values) if self._values is not None else len(self._split)
        self.labels = [int(v) for v in labels] if labels is not None else [-1] * n
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images")
        self.transform = create_image_transform(data_config, is_training=False)
        self.shape = (3, *_input_hw(data_config))
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def value(self, index: int) -> Any:
        """The raw image value of row ``index``: a path, a ``{"bytes", "path"}`` dict or a PIL image (undecoded)."""
        return self._values[index] if self._values is not None else self._split[index]["image"]

    def name(self, index: int) -> str:
        """The image's path, else ``<split> row <i>``: how messages name it."""
        return describe(self.value(index), f"{self.split} row {index}")

    def pixels(self, index: int) -> torch.Tensor:
        """The model input (3, H, W) float32, normalised with the model's mean/std, of one image.

        H, W are the data config's ``input_size`` (pixels, after resize and centre crop). Raises
        :class:`UnreadableImage` when the image cannot be decoded.
        """
        return self.transform(read_rgb(self.value(index)))

    def reason(self, index: int) -> str | None:
        """Why the image cannot be decoded, or None when it can."""
        try:
            read_rgb(self.value(index))
        except UnreadableImage as e:
            return e.reason
        return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels, ok = self.pixels(index), 1
        except UnreadableImage:
            pixels, ok = torch.zeros(self.shape), 0
        return {"pixel_values": pixels, "label": self.labels[index], "index": index, "ok": ok}


@dataclass
class EvalData:
    """One split of the data, ready for the model, and where it came from."""

    images: EvalImages
    labels: list[int]
    class_names: list[str]
    root: Path
    split: str


def load_eval_data(loaded: LoadedModel, data_root: str | Path | None = None, split: str = "test") -> EvalData:
    """The ``split`` of ``data_root`` (default: the run's recipe, else the download cache), model-ready.

    Raises :class:`UsageError` for an unknown split, data that cannot be loaded, or a class count that differs from
    the model's.

    The run's recipe also gives ``val_fraction`` and ``seed``, so ``split="validation"`` is the run's own split.
    Files the folder check finds unreadable are skipped with a warning naming them (as in training).
    """
    from .data import load_inat12k

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    recipe = read_run_recipe(loaded.run_dir)
    data_cfg = recipe.get("data") or {}
    if data_root is not None:
        where = "--data-root"
    elif data_cfg.get("root"):
        data_root, where = data_cfg["root"], f"{loaded.run_dir / RECIPE_FILE} (data.root)"
    else:
        from .data import default_root

        data_root, where = Path(default_root()) / "inaturalist_12K", "the default download location"
    root = Path(data_root).expanduser()
    try:  # a local folder, or a Hub dataset id (load_inat12k decides)
        dsdict = load_inat12k(root, val_fraction=data_cfg.get("val_fraction", 0.2), seed=recipe.get("seed", 42))
    except UsageError as e:
        raise UsageError(f"{e} (data root from {where}; pass --data-root DIR)") from e
    ds = dsdict[split]
    class_names = list(ds.features["label"].names)
    if len(class_names) != loaded.num_classes:
        raise UsageError(
            f"model {loaded.ref} predicts {loaded.num_classes} classes but {root} has {len(class_names)} "
            f"({', '.join(class_names)})"
        )
    if not loaded.label_names[0].startswith("class_") and class_names != loaded.label_names:
        logger.warning(
            "the model's label names %s differ from the data's class folders %s; scoring by index",
            loaded.label_names,
            class_names,
        )
    labels = [int(v) for v in ds["label"]]
    return EvalData(EvalImages(ds, loaded.data_config, labels, split), labels, class_names, root, split)


# ------------------------------------------------------------------------------------- the one evaluation
@contextlib.contextmanager
def float32_math() -> Iterator[None]:
    """Plain float32 for the duration: no TF32 in matmuls or cuDNN convolutions, cuDNN's deterministic algorithms
    (the process's settings are restored afterwards; torch's newer ``fp32_precision`` API, never the legacy one)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    saved_conv = getattr(conv, "fp32_precision", None)
    saved_matmul = getattr(matmul, "fp32_precision", None)
    saved = (cudnn.benchmark, cudnn.deterministic)
    try:
        if saved_conv is not None:
            conv.fp32_precision = "ieee"
        if saved_matmul is not None:
            matmul.fp32_precision = "ieee"
        cudnn.benchmark, cudnn.deterministic = False, True
        yield
    finally:
        if saved_conv is not None:
            conv.fp32_precision = saved_conv
        if saved_matmul is not None:
            matmul.fp32_precision = saved_matmul
        cudnn.benchmark, cudnn.deterministic = saved


def model_logits(
    model: torch.nn.Module,
    images: EvalImages,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
    accelerator: Any = None,
    progress: bool = True,
    desc: str = "evaluate",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (N, C) of every image, in ``images`` order, on the CPU, and the bool mask (N,) of the images
    that could be decoded (the other rows of logits are meaningless). N is ``len(images)``, C the model's classes.

    The model runs in eval mode, float32 (no autocast, no TF32; see :func:`float32_math`), under inference mode; its
    train/eval mode is restored afterwards.

    With an ``accelerator`` each process scores its share of the batches and every process gets the whole result.

    Raises:
        UsageError: ``images`` is empty.
        RuntimeError: the gathered batches do not cover every image exactly once.
    """
    from tqdm.auto import tqdm

    if len(images) == 0:
        raise UsageError(f"the {images.split} split has no images to evaluate")
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    main = True
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=True)
        main = accelerator.is_main_process
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        no_autocast = torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else None
        with float32_math(), torch.inference_mode(), no_autocast or contextlib.nullcontext():
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not (progress and main), leave=False):
                x = batch["pixel_values"].to(device, torch.float32)
                logits = model(x).float()
                index, ok = batch["index"].to(logits.device), batch["ok"].to(logits.device)
                if accelerator is not None:
                    logits, index, ok = accelerator.gather_for_metrics((logits.contiguous(), index, ok))
                parts.append((logits.cpu(), index.cpu(), ok.cpu()))
    finally:
        model.train(was_training)
    logits = torch.cat([p[0] for p in parts])
    index = torch.cat([p[1] for p in parts])
    ok = torch.cat([p[2] for p in parts])
    order = torch.argsort(index, stable=True)  # dataset order, whatever order the processes' batches came in
    logits, index, ok = logits[order], index[order], ok[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]  # padding duplicates from an uneven last batch, if any were left
    logits, index, ok = logits[first], index[first], ok[first]
    if not torch.equal(index, torch.arange(len(images))):
        raise RuntimeError(f"evaluation scored {len(index)} distinct images out of {len(images)}")
    return logits, ok.bool()


@dataclass
class Evaluation:
    """The result of :func:`evaluate_split`: the metrics and what they were computed from (readable images only).

    ``logits`` is (M, C) float32 on the CPU and ``labels`` (M,) int64, for the M readable images.
    """

    metrics: dict[str, Any]
    logits: torch.Tensor
    labels: torch.Tensor
    indices: list[int] = field(default_factory=list)  # dataset index of each row


def evaluate_split(
    loaded: LoadedModel,
    data: EvalData,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
    accelerator: Any = None,
    progress: bool = True,
) -> Evaluation:
    """THE evaluation of a model on a split (see the module docstring): training's final test pass and
    ``inat-zoo evaluate`` both report ``evaluate_split(...).metrics``.

    Unreadable images are skipped (warned about, listed in ``metrics["skipped"]``). Raises :class:`UsageError` when
    the split is empty or none of its images can be read.
    """
    main = accelerator is None or accelerator.is_main_process
    logits, ok = model_logits(
        loaded.model, data.images, batch_size=batch_size, num_workers=num_workers, accelerator=accelerator,
        progress=progress,
    )  # fmt: skip
    skipped = {data.images.name(i): data.images.reason(i) or "unreadable" for i in (~ok).nonzero().flatten().tolist()}
    if skipped and main:
        logger.warning(
            "skipped %d unreadable image(s) of the %s split: %s",
            len(skipped),
            data.split,
            format_skipped(f"{name} ({reason})" for name, reason in skipped.items()),
        )
    keep = ok.nonzero().flatten()
    if keep.numel() == 0:
        raise UsageError(f"none of the {len(ok)} images of the {data.split} split could be read")
    labels = torch.tensor(data.labels, dtype=torch.long)[keep]
    metrics = compute_metrics(logits[keep], labels, data.class_names, warn=main, split=data.split)
    metrics["evaluation"] = evaluation_rule(batch_size)
    metrics["skipped"] = skipped
    return Evaluation(metrics, logits[keep], labels, keep.tolist())


def final_test_metrics(
    run_dir: str | Path, *, accelerator: Any = None, num_workers: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Training's final test pass: the run's exported ``model/``, loaded as ``inat-zoo evaluate RUN`` loads it, on
    the test split of the run's ``data.root``, through :func:`evaluate_split`. Its result is ``metrics.json``'s
    ``test`` block, so ``inat-zoo evaluate RUN`` on the same device reproduces it to the last digit."""
    device = accelerator.device if accelerator is not None else default_device()
    loaded = load_model(str(run_dir), device)
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with first:  # one process fills the datasets cache, the others reuse it
        data = load_eval_data(loaded, None, "test")
    return evaluate_split(loaded, data, accelerator=accelerator, num_workers=num_workers, progress=progress).metrics


def _warn_absent_classes(absent: list[str], num_classes: int, split: str) -> None:
    logger.warning(
        "%d of %d classes have no image in the %s split (%s): macro averages are over the %d classes present; "
        "their per-class rows have support 0",
        len(absent),
        num_classes,
        split,
        ", ".join(absent),
        num_classes - len(absent),
    )


def compute_metrics(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], *, warn: bool = True, split: str = "test"
) -> dict[str, Any]:
    """Accuracy, top-k (k = min(5, classes)), loss, per-class precision/recall/F1, macro averages and the confusion
    matrix (rows = truth), all from one confusion matrix.

    Macro averages are over the classes that occur among ``labels``: a class without a single true example has no
    recall, and averaging its zero in would punish a perfect model for a folder it was not given. Such classes are
    named in a warning (``warn``) and in ``absent_classes``; their per-class rows stay, with support 0.

    Args:
        logits: (N, C) float scores, unnormalised (softmax is not applied first; the loss is computed in float64).
        labels: (N,) integer class indices in [0, C).
        class_names: C names, in label order.

    Returns:
        A JSON-ready dict: fractions in [0, 1] (``accuracy``, ``top{k}_accuracy``, per-class and macro
        precision/recall/F1), ``loss`` (mean cross-entropy, nats), ``num_samples``, and ``confusion_matrix`` as a
        C x C list of counts.
    """
    n, c = logits.shape
    labels = labels.long()
    preds = logits.argmax(1)
    cm = torch.bincount(labels * c + preds, minlength=c * c).reshape(c, c).double()
    tp, predicted, actual = cm.diag(), cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    present = actual > 0
    absent = [name for name, here in zip(class_names, present.tolist(), strict=True) if not here]
    if absent and warn:
        _warn_absent_classes(absent, c, split)
    k = min(MAX_TOP_K, c)
    topk = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean()
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "num_samples": n,
        "accuracy": float(tp.sum() / n),
        top_k_key(k): float(topk),
        "top_k": k,
        "loss": float(torch.nn.functional.cross_entropy(logits.double(), labels)),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "absent_classes": absent,
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": cm.long().tolist(),
    }


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a result (accuracy, top-k, loss, macro averages, counts): what trackers log."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
