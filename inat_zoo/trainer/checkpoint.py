"""The trainer's own state and its atomic writers: checkpoints (accelerate state + ours) and the best model."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..rundir import MODEL_DIR, checkpoint_path, complete_checkpoints, write_checkpoint_state


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
