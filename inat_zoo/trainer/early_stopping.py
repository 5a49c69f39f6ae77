"""Which epoch is the best so far, and when to stop: one rule for the exported model and for early stopping.

An epoch improves when its ``metric`` (``val_accuracy``: higher is better; ``val_loss``: lower is better) beats the
best so far by more than ``min_delta``; the best epoch is the last one that improved and is the one exported to
``model/``. With ``patience`` set (``train.early_stopping``), training stops after ``patience`` epochs in a row
without an improvement, as Keras' and Lightning's ``EarlyStopping`` do. Without it (``train.early_stopping: null``)
the rule is validation accuracy, any increase, never stopping: the trainer's rule before early stopping existed.
Pure: no torch, no files; the counters live in :class:`inat_zoo.trainer.checkpoint.TrainerState` (resume-safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StopRule:
    """``metric`` watched, the ``min_delta`` an improvement must exceed, ``patience`` (None: never stop)."""

    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    min_delta: float = 0.0
    patience: int | None = None

    @classmethod
    def from_recipe(cls, early_stopping) -> StopRule:
        """From ``recipe.train.early_stopping`` (None: the default rule, validation accuracy, no stopping)."""
        if early_stopping is None:
            return cls()
        return cls(early_stopping.metric, early_stopping.min_delta, early_stopping.patience)

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) by more than ``min_delta``."""
        if best is None:
            return True
        if self.metric == "val_loss":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def reason(self) -> str:
        """Why training stopped, in words: ``val_loss did not improve by 0.001 for 3 epochs``."""
        by = f" by {self.min_delta:g}" if self.min_delta else ""
        return f"{self.metric} did not improve{by} for {self.patience} epoch{'s' if self.patience != 1 else ''}"


@dataclass(frozen=True)
class Verdict:
    """One epoch judged: whether it improved (and is the new best), the best value and the epochs since it, and
    whether training stops now."""

    improved: bool
    best: float
    epochs_since_best: int
    stop: bool


def judge(rule: StopRule, value: float, best: float | None, epochs_since_best: int) -> Verdict:
    """The verdict on an epoch whose watched metric is ``value``, given the best so far and the epochs since it."""
    if rule.improves(value, best):
        return Verdict(True, value, 0, False)
    since = epochs_since_best + 1
    return Verdict(False, best, since, rule.patience is not None and since >= rule.patience)


def stop_record(rule: StopRule, stopped_epoch: int, best_epoch: int) -> dict:
    """What metrics.json says about an early stop: ``{"stopped_epoch", "best_epoch", "metric", "reason"}``."""
    return {"stopped_epoch": stopped_epoch, "best_epoch": best_epoch, "metric": rule.metric, "reason": rule.reason()}
