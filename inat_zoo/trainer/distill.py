"""Knowledge distillation (``train.distill``): the student also learns the softened outputs of a frozen teacher.

The loss is Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531)::

    loss = (1 - alpha) * CE(student, labels) + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))

The T**2 factor keeps the soft term's gradients on the scale of the hard term's when T changes (section 2 of the
paper). The hard term is whatever the trainer's criterion gave (plain or label-smoothed cross-entropy, or a mixup
criterion on soft targets), so this composes with it: :meth:`Distillation.__call__` receives that loss.

The teacher is loaded with :func:`inat_zoo.loading.load_model` (a run directory, ``local-dir:PATH``, ``hf-hub:ID``),
kept in eval mode without gradients on the accelerator's device (never wrapped in DDP: it does not train), and fed
the student's augmented crop, converted to its own data config: un-normalised with the student's mean/std, resized
to the teacher's input size, normalised with the teacher's mean/std.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..recipe_schema import Distill, Recipe


def no_distillation(loss, logits, images):
    """The hook when ``train.distill`` is off: the criterion's loss, unchanged."""
    return loss


def distillation_loss(student_logits, teacher_logits, temperature: float):
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Args:
        student_logits: ``(B, C)`` logits of the student (any float dtype; computed in float32).
        teacher_logits: ``(B, C)`` logits of the teacher, no gradient.
        temperature: T > 0.

    Returns:
        A float32 scalar tensor (nats, scaled by T**2), differentiable with respect to ``student_logits``.
    """
    import torch.nn.functional as F

    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


def _stats(config: dict, device):
    import torch

    mean = torch.tensor(config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


class Distillation:
    """The loss hook of a distilling run: ``loss = self(loss, logits, images)`` after the criterion.

    ``teacher`` is a module in eval mode with ``requires_grad`` off; ``student_config`` and ``teacher_config`` are
    timm data configs (``mean``, ``std``, ``input_size``).
    """

    def __init__(self, teacher, student_config: dict, teacher_config: dict, settings: Distill, accelerator):
        self.teacher, self.accelerator = teacher, accelerator
        self.alpha, self.temperature = float(settings.alpha), float(settings.temperature)
        device = accelerator.device
        self.student_mean, self.student_std = _stats(student_config, device)
        self.teacher_mean, self.teacher_std = _stats(teacher_config, device)
        self.size = tuple(int(v) for v in teacher_config["input_size"][-2:])

    def teacher_inputs(self, images):
        """The student's batch ``(B, 3, H, W)`` (normalised with its mean/std) as the teacher's input ``(B, 3, h, w)``
        float32 (its size, normalised with its mean/std)."""
        import torch.nn.functional as F

        pixels = images.float() * self.student_std + self.student_mean
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self.teacher_mean) / self.teacher_std

    def __call__(self, loss, logits, images):
        """``(1 - alpha) * loss + alpha * T**2 * KL(teacher || student)``: ``loss`` the criterion's scalar,
        ``logits`` the student's ``(B, C)``, ``images`` the student's input batch ``(B, 3, H, W)``."""
        import torch

        with torch.no_grad(), self.accelerator.autocast():
            teacher_logits = self.teacher(self.teacher_inputs(images))
        soft = distillation_loss(logits, teacher_logits, self.temperature)
        return (1.0 - self.alpha) * loss + self.alpha * soft


def check_teacher(teacher: str, num_classes: int | None) -> None:
    """The preflight's check of ``train.distill.teacher``: the MODEL exists and loads, and has ``num_classes``
    outputs (None: the data's count is not known yet, a Hub data set). Raises :class:`UsageError`."""
    import json

    from ..loading import load_model, resolve_model_ref

    try:
        name, _run = resolve_model_ref(teacher)
        if name.startswith("local-dir:"):  # a folder: its config.json says the count without loading the weights
            config = json.loads((Path(name[len("local-dir:") :]) / "config.json").read_text())
            outputs = config.get("num_classes") or len(config.get("label_names") or [])
        else:
            outputs = load_model(teacher).num_classes
    except (UsageError, OSError, ValueError) as e:
        raise UsageError(f"train.distill.teacher {teacher!r}: {e}") from None
    if num_classes is not None and outputs != num_classes:
        raise UsageError(
            f"train.distill.teacher {teacher!r} has {outputs} classes, the data {num_classes}: distil from a teacher "
            "trained on the same classes"
        )


def create_distillation(recipe: Recipe, student_config: dict, accelerator):
    """The loop's loss hook: :func:`no_distillation` when ``train.distill`` is null, else a :class:`Distillation`
    with the teacher loaded (:func:`inat_zoo.loading.load_model`), frozen and on ``accelerator.device``."""
    settings = recipe.train.distill
    if settings is None:
        return no_distillation
    from ..loading import load_model

    loaded = load_model(settings.teacher, device=accelerator.device)
    teacher = loaded.model.eval().requires_grad_(False)
    accelerator.print(f"distilling from {settings.teacher} (alpha {settings.alpha:g}, T {settings.temperature:g})")
    return Distillation(teacher, student_config, loaded.data_config, settings, accelerator)
