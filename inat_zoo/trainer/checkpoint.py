"""The trainer's own state and its atomic writers: checkpoints (accelerate state + ours) and the best model."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..rundir import (
    MODEL_DIR,
    checkpoint_path,
    complete_checkpoints,
    read_checkpoint_state,
    read_metrics,
    write_checkpoint_state,
)


@dataclass
class TrainerState:
    """Everything beyond accelerate's own state needed to continue a run exactly; saved in each checkpoint."""

    epoch: int = 0  # completed epochs
    batches_done: int = 0  # batches of the epoch in progress already trained (mid-epoch checkpoints)
    global_update: int = 0  # optimizer updates so far
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    history: list[dict] = field(default_factory=list)
    train_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n of the epoch
    epoch_time_s: float = 0.0  # time spent so far in the epoch in progress
    train_time_s: float = 0.0  # wall time of training + validation, all sessions
    loop_time_s: float = 0.0  # time inside the training loop only (images_per_s)
    images_seen: int = 0
    unfrozen: list[str] = field(default_factory=list)
    val_num_samples: int = 0
    best_metric: float | None = None  # the best value of the metric that picks the exported epoch (early_stopping)
    epochs_since_best: int = 0
    early_stop: dict | None = None  # set when early stopping ended the run: inat_zoo.trainer.early_stopping

    def judge_epoch(self, rule, epoch: int, record: dict) -> bool:
        """Judge the finished ``epoch`` (its history ``record``) by ``rule`` (:class:`.early_stopping.StopRule`):
        update the best epoch and the early-stopping counter, mark the stop; returns whether the epoch improved."""
        from .early_stopping import judge, stop_record

        if self.best_metric is None and self.best_epoch:  # a checkpoint from before the counters existed
            self.best_metric = self.history[self.best_epoch - 1][rule.metric]
        verdict = judge(rule, record[rule.metric], self.best_metric, self.epochs_since_best)
        self.best_metric, self.epochs_since_best = verdict.best, verdict.epochs_since_best
        if verdict.improved:
            self.best_epoch, self.best_val_accuracy = epoch, record["val_accuracy"]
        if verdict.stop:
            self.early_stop = stop_record(rule, epoch, self.best_epoch)
        return verdict.improved


def finished_run(checkpoint: Path | None, output_dir: Path, epochs: int) -> tuple[str, dict] | None:
    """``(how it ended, metrics.json)`` when the run resumed from ``checkpoint`` is finished: early stopping ended it
    or its last checkpoint is at the final epoch (``epochs``), and its test pass wrote metrics.json, so nothing is
    left to do. None otherwise (no checkpoint, epochs left, or killed before its test pass, which resuming runs)."""
    if checkpoint is None:
        return None
    state, metrics = read_checkpoint_state(checkpoint), read_metrics(output_dir)
    if metrics is None:
        return None
    stop = state.get("early_stop")
    if stop is not None:
        return (
            f"stopped early at epoch {stop['stopped_epoch']} ({stop['reason']}; best epoch {stop['best_epoch']})",
            metrics,
        )
    if state.get("epoch", 0) >= epochs and not state.get("batches_done"):
        return f"finished all {epochs} epochs (best epoch {state.get('best_epoch')})", metrics
    return None


def save_checkpoint(accelerator, output_dir: Path, state: TrainerState, keep: int) -> None:
    """accelerate ``save_state`` into a hidden folder, our state file last, then one atomic rename; only the last
    ``keep`` complete checkpoints stay. Every rank calls it (save_state and the barriers are collective)."""
    final = checkpoint_path(output_dir, state.global_update)
    partial = checkpoint_path(output_dir, state.global_update, partial=True)
    is_main = accelerator.is_main_process
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if is_main:
        from ..atomic import apply_default_modes

        apply_default_modes(partial)  # save_state writes the weights 0600 (safetensors): make them umask's
        write_checkpoint_state(partial, asdict(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def export_best(accelerator, model, output_dir: Path, state: TrainerState, label_names, data_config: dict) -> None:
    """The best epoch's model (``model``: the unwrapped or EMA module) into ``model/`` (timm ``save_for_hf``), with
    its epoch and validation accuracy; every rank waits for it."""
    from ..export import save_model_folder

    if accelerator.is_main_process:
        save_model_folder(
            model,
            output_dir / MODEL_DIR,
            label_names=label_names,
            data_config=data_config,
            extra_config={"inat_zoo": {"epoch": state.best_epoch, "val_accuracy": state.best_val_accuracy}},
        )
    accelerator.wait_for_everyone()
