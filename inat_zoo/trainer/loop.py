"""The training loop over a run's pieces (:func:`inat_zoo.trainer.build.build_run`): epochs, validation, scheduled
unfreezing, checkpoints, resume and the final test pass. Only the main process writes files or prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..recipe_schema import Recipe
from ..rundir import exported_epoch, read_checkpoint_state, write_history, write_metrics
from .accelerate_compat import rewrap_ddp
from .build import add_param_groups, build_run, create_scheduler, current_lr, flat_config
from .checkpoint import TrainerState, export_best, save_checkpoint
from .early_stopping import StopRule
from .tracking import backends, log_curves, start_trackers

EpochCallback = Callable[[int, dict], None]


class Trainer:
    """One run's pieces and the loop over them; an object so resume, unfreeze and checkpoints share state."""

    def __init__(self, recipe: Recipe, resume_from: Path | None, epoch_callback: EpochCallback | None):
        self.recipe = recipe
        self.train_config = recipe.train
        self.output_dir = Path(recipe.output_dir)
        self.resume_from, self.epoch_callback = resume_from, epoch_callback
        parts = build_run(recipe)
        self.accelerator, self.core, self.model = parts.accelerator, parts.core, parts.model
        self.optimizer, self.scheduler, self.ema = parts.optimizer, parts.scheduler, parts.ema
        self.train_loader, self.val_loader = parts.train_loader, parts.val_loader
        self.criterion, self.mixup, self.distill = parts.criterion, parts.mixup, parts.distill
        self.stop_rule = StopRule.from_recipe(recipe.train.early_stopping)
        self.mlflow_uri_before: str | None = None  # what fit's start_trackers found, for end_trackers to put back
        self.label_names, self.data_config = parts.label_names, parts.data_config
        self.params_total, self.updates_per_epoch = parts.params_total, parts.updates_per_epoch
        self.state = TrainerState()
        self.log_every = 10 if backends(recipe) else 0  # per-step metrics for the tracker, every N updates
        self.trainable_params = sum(p.numel() for p in self.core.parameters() if p.requires_grad)

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (rank 0): the one that writes files and logs."""
        return self.accelerator.is_main_process

    def _eval_module(self, unwrap: bool = False):
        if self.ema is not None:
            return self.ema.module
        return self.core if unwrap else self.model

    # ------------------------------------------------------------------------------------- run directory
    def _write_history(self) -> None:
        if self.is_main:
            write_history(self.output_dir, self.state.history)

    def _save_checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.output_dir, self.state, self.train_config.keep_checkpoints)

    def _export(self) -> None:
        module = self._eval_module(unwrap=True)
        export_best(self.accelerator, module, self.output_dir, self.state, self.label_names, self.data_config)

    def _resume(self) -> None:
        checkpoint = self.resume_from
        saved = read_checkpoint_state(checkpoint)
        for stage in saved.get("unfrozen", []):
            self._unfreeze(stage)
        self.accelerator.load_state(str(checkpoint))
        self.state = state = TrainerState(**saved)
        if not self.is_main:
            state.train_sums = [0.0, 0.0, 0.0]  # the saved sums are totals over all ranks; main carries them
        if self.scheduler is not None:
            self.scheduler.step_update(state.global_update)
        self._write_history()
        # The best model is exported right after its epoch's checkpoint; a kill in between leaves model/ stale.
        if state.best_epoch == state.epoch and state.batches_done == 0:
            if exported_epoch(self.output_dir) != state.best_epoch:
                self._export()
        self.accelerator.print(f"resumed from {checkpoint} (epoch {state.epoch}, update {state.global_update})")

    def _unfreeze(self, stage: str) -> None:
        """Make ``stage`` trainable, add its parameters to the optimizer (timm's grouping), rebuild the schedule."""
        from ..freeze import unfreeze

        accelerator = self.accelerator
        new = {id(p) for p in unfreeze(self.core, stage)}
        if self.ema is not None:
            unfreeze(self.ema.module, stage)
        inner = self.optimizer.optimizer
        add_param_groups(inner, self.core, self.recipe, new)
        if accelerator.num_processes > 1:
            self.model = rewrap_ddp(accelerator, self.core, compile_model=self.train_config.compile)
        self.scheduler = create_scheduler(inner, self.recipe, self.updates_per_epoch)
        if self.scheduler is not None:
            self.scheduler.step_update(self.state.global_update)
        self.trainable_params = sum(p.numel() for p in self.core.parameters() if p.requires_grad)
        if stage not in self.state.unfrozen:
            self.state.unfrozen.append(stage)
        accelerator.print(f"unfroze {stage}: {self.trainable_params:,} trainable parameters")

    # -------------------------------------------------------------------------------------------- the loop
    def evaluate(self, loader, desc: str) -> dict:
        """Accuracy, mean cross-entropy and sample count of the evaluation module over ``loader``, all ranks."""
        channels_last = self.train_config.channels_last
        module = self._eval_module()
        return evaluate_module(self.accelerator, module, loader, channels_last, desc=desc, progress=self.is_main)

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (or its rest, after a mid-epoch checkpoint); returns loss, accuracy and images over all ranks.

        The loss is the mean training criterion (cross-entropy with the recipe's label smoothing and class weights,
        against mixup's soft targets when mixing, nats) and the accuracy a fraction in [0, 1], both over the images
        of this pass; with mixup, a mixed image counts as right when the model picks its dominant label.
        """
        import torch
        from tqdm.auto import tqdm

        from .losses import dominant_labels

        accelerator, state = self.accelerator, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if state.batches_done:
            loader = accelerator.skip_first_batches(self.train_loader, state.batches_done)
        # loss*n, correct, n of the epoch so far, as float64 tensors on the device (one sync per reduce, not per step)
        sums = [torch.tensor(value, dtype=torch.float64, device=accelerator.device) for value in state.train_sums]
        self._epoch_start = time.perf_counter() - state.epoch_time_s
        self._loop_start = time.perf_counter()
        total = len(self.train_loader)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            total=total,
            initial=state.batches_done,
            disable=not self.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            images, labels = batch_inputs(batch, self.train_config.channels_last)
            loss, logits, targets = self._train_step(images, labels, epoch, state.batches_done)
            state.batches_done += 1
            count = labels.numel()
            sums[0] += loss.detach().double() * count
            sums[1] += (logits.detach().argmax(1) == dominant_labels(targets)).sum()
            sums[2] += count
            if accelerator.sync_gradients:
                self._after_update(loss, sums, total)
        state.loop_time_s += time.perf_counter() - self._loop_start
        loss_sum, correct, count = accelerator.reduce(torch.stack(sums), "sum").tolist()
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "count": count}

    def _train_step(self, images, labels, epoch: int, step: int):
        """Mix (mixup/CutMix, seeded by epoch and the epoch's batch ``step``), forward, backward, and the optimizer
        step on an accumulation's last micro-batch: ``(loss, logits, targets)``."""
        accelerator, clip = self.accelerator, self.train_config.clip_grad
        with accelerator.accumulate(self.model):
            images, targets = self.mixup(images, labels, epoch, step)
            logits = self.model(images)
            loss = self.criterion(logits, targets)
            loss = self.distill(loss, logits, images)
            accelerator.backward(loss)
            if clip is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, logits, targets

    def _after_update(self, loss, sums, total: int) -> None:
        """After an optimizer update: schedule, EMA, tracker, and the mid-epoch checkpoint every N updates."""
        import torch

        accelerator, state = self.accelerator, self.state
        state.global_update += 1
        if self.scheduler is not None:
            self.scheduler.step_update(state.global_update)
        if self.ema is not None:
            self.ema.update(self.core, step=state.global_update)
        if self.log_every and state.global_update % self.log_every == 0:  # .item() syncs: only when tracked
            accelerator.log({"train/loss": loss.item(), "train/lr": current_lr(self.optimizer)}, state.global_update)
        every = self.train_config.checkpoint_every_steps
        if every and state.global_update % every == 0 and state.batches_done < total:
            state.loop_time_s += time.perf_counter() - self._loop_start
            self._loop_start = time.perf_counter()
            state.train_sums = accelerator.reduce(torch.stack(sums), "sum").tolist()
            state.epoch_time_s = time.perf_counter() - self._epoch_start
            self._save_checkpoint()

    def fit(self) -> dict:
        """Train the remaining epochs (resuming first when asked), then :meth:`finish`: metrics.json's content."""
        self.mlflow_uri_before = start_trackers(self.accelerator, self.recipe, flat_config(self.recipe.model_dump()))
        if self.resume_from is not None:
            self._resume()
        state = self.state
        while state.epoch < self.train_config.epochs and state.early_stop is None:
            epoch = state.epoch + 1
            for step in self.recipe.model.unfreeze:
                if step.epoch == epoch and step.stage not in state.unfrozen:
                    self._unfreeze(step.stage)
            started = time.perf_counter() - state.epoch_time_s
            images_before = state.train_sums[2]
            train_metrics = self.train_epoch(epoch)
            state.images_seen += int(train_metrics["count"] - images_before)
            validation = self.evaluate(self.val_loader, "validation")
            self._end_epoch(epoch, train_metrics, validation, time.perf_counter() - started)
        metrics = self.finish()
        log_curves(self.accelerator, state.history, state.best_epoch, state.global_update)
        return metrics

    def _end_epoch(self, epoch: int, train_metrics: dict, validation: dict, elapsed: float) -> None:
        """Record the epoch, judge it (best epoch, early stopping: :meth:`TrainerState.judge_epoch`), checkpoint it,
        export the model when it improved, report."""
        accelerator, state = self.accelerator, self.state
        lr = current_lr(self.optimizer)
        record = epoch_record(epoch, train_metrics, validation, lr, elapsed)
        state.history.append(record)
        state.val_num_samples = validation["num_samples"]
        state.train_time_s += elapsed
        state.epoch, state.batches_done, state.epoch_time_s, state.train_sums = epoch, 0, 0.0, [0.0, 0.0, 0.0]
        improved = state.judge_epoch(self.stop_rule, epoch, record)
        self._write_history()
        self._save_checkpoint()
        if improved:
            self._export()
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=state.global_update)
        accelerator.print(epoch_line(record, self.train_config.epochs, improved, state.early_stop))
        if self.epoch_callback is not None and self.is_main:
            self.epoch_callback(epoch, dict(record))

    def finish(self) -> dict:
        """Evaluate the test split once with the exported best model, then write metrics.json.

        The test pass is :func:`inat_zoo.evaluate.final_test_metrics`: the exported ``model/`` loaded as
        ``inat-zoo evaluate`` loads it, the original test images, the one evaluation rule (float32, full decode,
        fixed batches), whatever this run's training pipeline was (prepared cache, feature cache, mixed precision,
        EMA, channels_last, compile). ``metrics["test"]`` is that function's result, unchanged.
        """
        from ..evaluate import final_test_metrics, scalar_metrics

        accelerator, state = self.accelerator, self.state
        accelerator.wait_for_everyone()  # model/ holds the best epoch on every rank's view of the disk
        validation = best_validation(state)
        workers = self.recipe.data.num_workers
        test = final_test_metrics(self.output_dir, accelerator=accelerator, num_workers=workers, progress=self.is_main)
        metrics = {
            "model": self.recipe.model.name,
            "freeze": str(self.recipe.model.freeze),
            "params": self.params_total,
            "trainable_params": self.trainable_params,
            "best_epoch": state.best_epoch,
            "epochs": state.epoch,
            "validation": validation,
            "test": test,
            "world_size": accelerator.num_processes,
            "train_time_s": state.train_time_s,
            "images_per_s": state.images_seen / state.loop_time_s if state.loop_time_s else None,
        }
        if self.train_config.early_stopping is not None:  # null: it never stopped (all train.epochs ran)
            metrics["early_stopping"] = state.early_stop
        if self.is_main:
            write_metrics(self.output_dir, metrics)
        accelerator.log({f"test/{k}": v for k, v in scalar_metrics(test).items()}, step=state.global_update)
        accelerator.print(
            f"best epoch {state.best_epoch}: validation acc {validation['accuracy']:.4f}, "
            f"test acc {test['accuracy']:.4f} ({test['num_samples']} images); run directory {self.output_dir}"
        )
        return metrics


def best_validation(state: TrainerState) -> dict:
    """The validation metrics of the best epoch, as :func:`evaluate_module` returned them."""
    record = state.history[state.best_epoch - 1]
    return {"accuracy": record["val_accuracy"], "loss": record["val_loss"], "num_samples": state.val_num_samples}


def batch_inputs(batch, channels_last: bool):
    """``(images, labels)`` of a loader's batch (a dict of images, a tuple of cached features), images in
    channels_last memory format when asked.

    Images are ``(B, 3, H, W)`` float32 normalised (or cached features ``(B, D)`` float32, left as they are); labels
    are ``(B,)`` int64 class indices.
    """
    import torch

    images, labels = (batch["pixel_values"], batch["label"]) if isinstance(batch, dict) else batch
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def evaluate_module(accelerator, module, loader, channels_last: bool, *, desc: str, progress: bool) -> dict:
    """Accuracy, mean cross-entropy (float64 sums over float32 logits) and sample count of ``module`` in eval mode
    over ``loader``, gathered over all ranks (``gather_for_metrics`` drops the padding of the last batch).

    Returns ``{"accuracy": fraction in [0, 1], "loss": mean cross-entropy in nats, "num_samples": int}``; runs
    under inference mode and the accelerator's autocast (the logits are cast to float32 before the loss).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    module.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    correct = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    count = 0
    with torch.inference_mode(), accelerator.autocast():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            images, labels = batch_inputs(batch, channels_last)
            logits = module(images)
            logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            count += labels.numel()
    return {"accuracy": correct.item() / max(count, 1), "loss": loss_sum.item() / max(count, 1), "num_samples": count}


def epoch_line(record: dict, epochs: int, improved: bool, early_stop: dict | None) -> str:
    """The line printed after an epoch (``*``: the new best epoch), and why training stops when it stops early."""
    line = (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
        f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}{' *' if improved else ''}"
        f"  lr {record['lr']:.2e}  {record['epoch_time_s']:.1f}s"
    )
    return line if early_stop is None else f"{line}\nearly stopping at epoch {record['epoch']}: {early_stop['reason']}"


def epoch_record(epoch: int, train_metrics: dict, validation: dict, lr: float, elapsed: float) -> dict:
    """One line of history.jsonl: the epoch's train and validation loss (nats) / accuracy (fraction), lr, and
    ``elapsed`` as ``epoch_time_s`` (wall-clock seconds)."""
    return {
        "epoch": epoch,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        "val_loss": validation["loss"],
        "val_accuracy": validation["accuracy"],
        "lr": lr,
        "epoch_time_s": elapsed,
    }
