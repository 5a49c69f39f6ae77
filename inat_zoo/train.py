"""The accelerate trainer: ``python -m inat_zoo.train RECIPE [key=value ...]`` (or ``accelerate launch -m ...``).

One function, :func:`train`, runs a recipe under whatever launch context exists (plain python = one process;
``accelerate launch``/torchrun = DDP) and writes the run directory described in the README: the resolved
``recipe.yaml``, ``checkpoints/`` (accelerate states, the last K, each committed by an atomic rename so a kill never
leaves one that resume would trust), ``model/`` (timm ``save_for_hf`` folder of the best epoch by validation
accuracy), ``history.jsonl`` and ``metrics.json``. The test split is evaluated once, at the end, with that model.
Only the main process writes files or prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import dump_recipe, load_recipe, validate_recipe
from .errors import UsageError
from .rundir import (  # noqa: F401  (STATE_FILE, complete_checkpoints, check_run_directory: re-exported for tests)
    MODEL_DIR,
    STATE_FILE,
    check_run_directory,
    checkpoint_path,
    complete_checkpoints,
    exported_epoch,
    forget_history,
    lock_run_directory,
    partial_checkpoints,
    read_checkpoint_state,
    stopped_before_first_checkpoint,
    write_checkpoint_state,
    write_history,
    write_metrics,
    write_recipe,
)

EpochCallback = Callable[[int, dict], None]


# --------------------------------------------------------------------------------------------- run directory
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


def check_data_root(recipe: dict) -> None:
    """``data.root`` is an existing local path or a valid Hub dataset id (the one rule: :mod:`inat_zoo.hub_ids`);
    whether the Hub dataset exists is known when load_inat12k loads it, still before anything is written."""
    from .hub_ids import resolve_data_root

    try:
        resolve_data_root(recipe["data"]["root"], "data.root")
    except UsageError as e:
        raise UsageError(f"{e} (run `inat-zoo data download` or `inat-zoo data sample --root DIR`)") from e


# ------------------------------------------------------------------------------------------------ components
def _timm_model(recipe: dict, num_classes: int | None, args: dict, *, meta: bool):
    import timm
    import torch

    from . import models  # noqa: F401  (registers inat_*)

    m = recipe["model"]
    classes = {} if num_classes is None else {"num_classes": num_classes}
    try:
        # on the meta device: parameters without storage and no weights loaded, for checks that cost nothing
        with torch.device("meta") if meta else contextlib.nullcontext():
            return timm.create_model(m["name"], pretrained=m["pretrained"] and not meta, **classes, **args)
    except (TypeError, ValueError) as e:  # an unknown or bad keyword argument of the model's constructor
        raise UsageError(f"model.args for {m['name']!r} are not accepted: {e}") from None


def _model_args(recipe: dict, num_classes: int | None) -> dict:
    """``model.args``, plus ``img_size=data.image_size`` for a model that takes only its own input size (timm's
    ``fixed_input_size``: FlexibleCNN's flatten head, ViTs) when the recipe names no ``img_size``: the recipe asks
    for crops of that size, so the model is built for them instead of failing on the first batch."""
    args = dict(recipe["model"]["args"])
    size = recipe["data"]["image_size"]
    if size is None or "img_size" in args:
        return args
    cfg = getattr(_timm_model(recipe, num_classes, args, meta=True), "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and tuple(cfg["input_size"][-2:]) != (size, size):
        args["img_size"] = size
    return args


def _create_model(recipe: dict, num_classes: int | None, *, meta: bool = False):
    """The recipe's timm model with ``num_classes`` outputs (None: the model's default), on the meta device with
    ``meta`` (for :func:`preflight`). Raises :class:`UsageError` when the model does not accept ``model.args``."""
    args = _model_args(recipe, num_classes)
    try:
        return _timm_model(recipe, num_classes, args, meta=meta)
    except UsageError as e:
        if "img_size" in args and "img_size" not in recipe["model"]["args"]:
            raise UsageError(
                f"{e} (img_size={args['img_size']} is data.image_size: {recipe['model']['name']!r} takes a fixed "
                "input size, built for the training crops)"
            ) from None
        raise


def _class_count(recipe: dict) -> int | None:
    """The classes in ``data.root``/train, listed as the data layer lists them (and its layout checked); None for
    a Hub data set, whose labels are known only once it is loaded (checks then use the model's default)."""
    root = Path(recipe["data"]["root"])
    if not root.is_dir():
        return None
    from .data.checks import scan_root

    train, _ = scan_root(root)
    return len(train.classes)


def preflight(recipe: dict) -> None:
    """Resolve a validated recipe against its model, built on the meta device for the data's class count (no
    memory, no weights, no file written), so its mistakes stop the start instead of a later epoch:

    - the model name and ``model.args`` (:func:`_create_model`);
    - ``model.freeze`` and every ``model.unfreeze`` stage name against the model's stages
      (:func:`inat_zoo.freeze.check_schedule`); the unfreeze epochs are checked by the recipe schema;
    - the input size against the model: a square training crop (``data.image_size``, else ``model.args.img_size``,
      else the model's default) that the model, its head included, can take.

    Raises :class:`UsageError` for each of them.
    """
    from .freeze import check_schedule

    m = recipe["model"]
    _check_square(m["args"].get("img_size"))
    model = _create_model(recipe, _class_count(recipe), meta=True)
    check_schedule(model, m["freeze"], m["unfreeze"])
    _check_input_size(model, recipe)


def _check_square(img_size) -> None:
    if isinstance(img_size, (list, tuple)) and len(set(img_size)) != 1:
        raise UsageError(
            f"model.args.img_size {list(img_size)} is not square: training crops square images "
            "(data.image_size x data.image_size); give one int"
        )


def _check_input_size(model, recipe: dict) -> None:
    """Run a (2, 3, H, W) meta batch (the RGB crops the loaders make) through the model in eval mode."""
    import torch

    name = recipe["model"]["name"]
    img_size, image_size = recipe["model"]["args"].get("img_size"), recipe["data"]["image_size"]
    height, width = _data_config(model, recipe)["input_size"][-2:]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    declared = tuple(cfg.get("input_size", (0, height, width))[-2:])
    asked = img_size[-1] if isinstance(img_size, (list, tuple)) else img_size  # square: _check_square
    if asked is not None and image_size is not None and asked != image_size:  # the exported config would say both
        raise UsageError(
            f"model.args.img_size {img_size} contradicts data.image_size {image_size}: the model is trained on "
            f"{image_size}x{image_size} crops; drop img_size (it follows data.image_size) or make them equal"
        )
    if cfg.get("fixed_input_size") and declared != (height, width):
        raise UsageError(
            f"model.args.img_size {img_size} contradicts data.image_size {image_size}: {name!r} takes only "
            f"{declared[0]}x{declared[1]} inputs; set one of them (or drop img_size: it follows data.image_size)"
        )
    source = f"data.image_size={image_size}" if image_size else ("model.args.img_size" if img_size else "its config")
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, 3, height, width, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "meta" in reason:  # an operation without a meta kernel (.item(), ...): the shapes cannot be checked here
            return
        raise UsageError(f"model {name!r} cannot take the 3x{height}x{width} input of {source}: {reason}") from None


def _data_config(model, recipe: dict) -> dict:
    """The model's timm data config with the training crop size: ``data.image_size``, else ``model.args.img_size``
    (square: :func:`preflight` refuses another), else the model's own."""
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    size = recipe["data"]["image_size"] or recipe["model"]["args"].get("img_size")
    if isinstance(size, (list, tuple)):
        size = size[-1]
    if size:
        cfg["input_size"] = (cfg["input_size"][0], int(size), int(size))
    return cfg


def _param_groups(model, recipe: dict) -> list[dict]:
    """timm's parameter groups (no weight decay on 1-d params nor on the model's ``no_weight_decay()``, optional
    layer-wise lr scale) over trainable params: the groups ``create_optimizer_v2`` builds."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    t = recipe["train"]
    skip = getattr(model, "no_weight_decay", set)()  # as create_optimizer_v2 does (e.g. a ViT's pos_embed)
    if t["layer_decay"] is not None:
        return param_groups_layer_decay(model, t["weight_decay"], skip, layer_decay=t["layer_decay"])
    return param_groups_weight_decay(model, t["weight_decay"], no_weight_decay_list=skip)


def _create_scheduler(optimizer, recipe: dict, updates_per_epoch: int):
    from timm.scheduler import create_scheduler_v2

    t = recipe["train"]
    if t["scheduler"] == "none":
        return None
    kwargs = {}
    if t["decay_epochs"] is not None:
        kwargs["decay_epochs"] = t["decay_epochs"]
    elif t["scheduler"] == "step":
        kwargs["decay_epochs"] = max(1, t["epochs"] // 3)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=t["scheduler"],
        num_epochs=t["epochs"],
        warmup_epochs=t["warmup_epochs"],
        warmup_lr=t["warmup_lr"],
        min_lr=t["min_lr"],
        decay_rate=t["decay_rate"],
        warmup_prefix=False,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
        **kwargs,
    )
    return scheduler


def _loader_options(size: int, batch_size: int, train: bool) -> dict:
    # a last batch of 1 breaks BatchNorm in train mode
    return {"batch_size": batch_size, "shuffle": train, "drop_last": train and size > batch_size}


def _loader(dataset, batch_size: int, *, train: bool, num_workers: int, pin_memory: bool):
    """A plain DataLoader (cached features). Shuffled, accelerate's seedable sampler orders it by (seed, epoch); its
    own generator keeps the start of an epoch from drawing on the global RNG that dropout uses."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        **_loader_options(len(dataset), batch_size, train),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def _image_loader(
    split, transform, data_config, batch_size: int, *, train: bool, num_workers: int, pin_memory: bool, seed=None
):
    """Images through the fast decoder; for training, shuffled and each sample's augmentation seeded by (seed, epoch,
    index)."""
    from .data import create_image_loader

    options = _loader_options(len(split), batch_size, train)
    return create_image_loader(
        split, transform, data_config, **options, num_workers=num_workers, pin_memory=pin_memory, seed=seed
    )


def _flat(recipe: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in recipe.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


# ------------------------------------------------------------------------------------------------------ train
class _Trainer:
    """The pieces of one run and the loop over them; an object so resume, unfreeze and checkpoints share state."""

    def __init__(self, recipe: dict, resume_from: Path | None, epoch_callback: EpochCallback | None):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        from .data import create_image_transform, load_inat12k

        self.recipe = recipe
        self.t = recipe["train"]
        self.out = Path(recipe["output_dir"])
        self.epoch_callback = epoch_callback
        self.resume_from = resume_from
        from accelerate.state import AcceleratorState, GradientState

        track = recipe["track"]
        # A process may train several recipes (sweeps, tests): forget the previous run's mixed precision and
        # accumulation settings, keep the process group (PartialState) of the launch.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = acc = Accelerator(
            mixed_precision=self.t["mixed_precision"],
            gradient_accumulation_steps=self.t["grad_accum_steps"],
            log_with="wandb" if track["wandb"] else None,
            project_config=ProjectConfiguration(project_dir=str(self.out), automatic_checkpoint_naming=False),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            step_scheduler_with_optimizer=False,
        )
        set_seed(recipe["seed"])
        d = recipe["data"]
        with acc.main_process_first():  # one process fills the datasets cache, the others reuse it
            dsdict = load_inat12k(d["root"], val_fraction=d["val_fraction"], seed=recipe["seed"], strict=d["strict"])
        self.label_names = list(dsdict["train"].features["label"].names)
        self.model = self.core = _create_model(recipe, len(self.label_names))
        self.data_config = _data_config(self.core, recipe)
        if d["prepared_cache"]:
            from .data import prepare_dataset
            from .data.transforms import decode_short_side

            with acc.main_process_first():
                dsdict = prepare_dataset(dsdict, short_side=decode_short_side(self.data_config))

        self.params_total = sum(p.numel() for p in self.core.parameters())  # before freezing turns some into buffers
        freeze = recipe["model"]["freeze"]
        if freeze != "none":
            from .freeze import apply_freeze

            self.core = self.model = apply_freeze(self.core, freeze)
        if self.t["channels_last"]:
            self.core.to(memory_format=torch.channels_last)

        aug = d["augment"]
        train_tf = create_image_transform(self.data_config, is_training=True, augment=aug)
        eval_tf = create_image_transform(self.data_config, is_training=False)
        pin = torch.cuda.is_available()
        eval_bs = self.t["eval_batch_size"] or self.t["batch_size"]
        nw = d["num_workers"]
        self.train_loader = _image_loader(
            dsdict["train"],
            train_tf,
            self.data_config,
            self.t["batch_size"],
            train=True,
            num_workers=nw,
            pin_memory=pin,
            seed=recipe["seed"],
        )
        # the test split is scored once, at the end, by the one evaluation function (finish), not by a loader here
        self.val_loader = _image_loader(
            dsdict["validation"], eval_tf, self.data_config, eval_bs, train=False, num_workers=nw, pin_memory=pin
        )

        self.cached = self._feature_cache_wanted()
        if self.cached:
            self._switch_to_cached_features(dsdict, eval_tf, eval_bs)

        from timm.optim import create_optimizer_v2

        self.optimizer = create_optimizer_v2(
            self.core,
            opt=self.t["optimizer"],
            lr=self.t["lr"],
            weight_decay=self.t["weight_decay"],
            layer_decay=self.t["layer_decay"],
        )
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=self.t["label_smoothing"])
        self.ema = None
        if self.t["ema"] is not False:
            from timm.utils import ModelEmaV3

            decay = 0.9998 if self.t["ema"] is True else float(self.t["ema"])
            # the copy stays where the model is when it is made: move the model first, or the EMA (and evaluation
            # with it) would live on the CPU while prepare() puts the model on the accelerator
            self.core.to(acc.device)
            self.ema = ModelEmaV3(self.core, decay=decay, use_warmup=True)
            acc.register_for_checkpointing(self.ema)

        model = self.core
        if self.cached:
            from .feature_cache import HeadOnly

            model = HeadOnly(self.core)  # shares the head's parameters: training it trains (and exports) the model
        if self.t["compile"]:
            model = torch.compile(model)
        self.model, self.optimizer, self.train_loader, self.val_loader = acc.prepare(
            model, self.optimizer, self.train_loader, self.val_loader
        )
        # the timm scheduler is stepped by us with the real update count of this process (not prepared)
        self.updates_per_epoch = math.ceil(len(self.train_loader) / self.t["grad_accum_steps"])
        self.scheduler = _create_scheduler(self.optimizer.optimizer, recipe, self.updates_per_epoch)
        self.state = TrainerState()
        self.log_every = 10 if track["wandb"] else 0  # per-step metrics for the tracker, every N updates
        self.trainable_params = sum(p.numel() for p in self.core.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------- head feature cache
    def _feature_cache_wanted(self) -> bool:
        """``auto``: for freeze=head when the model allows the cut, nothing needs the full model in the loop and the
        recipe asks for no augmentation of its own (``data.augment``)."""
        from .feature_cache import why_no_feature_cache

        setting = self.t["head_feature_cache"]
        if setting is False or self.recipe["model"]["freeze"] != "head":
            if setting is True:
                raise UsageError("train.head_feature_cache=true needs model.freeze=head")
            return False
        reason = why_no_feature_cache(self.core)
        if reason is None and self.t["ema"] is not False:
            reason = "train.ema averages the whole model"
        if reason is None and self.recipe["model"]["unfreeze"]:
            reason = "model.unfreeze changes the frozen part"
        if reason is None and self.recipe["data"]["augment"]:
            # the recipe asks for augmentation that fixed features of the evaluation view cannot give
            reason = f"data.augment sets {', '.join(sorted(self.recipe['data']['augment']))}"
        if reason is not None:
            if setting is True:
                raise UsageError(f"train.head_feature_cache=true is not possible: {reason}")
            self.accelerator.print(f"head feature cache off: {reason}")
            return False
        return True

    def _switch_to_cached_features(self, dsdict, eval_tf, eval_bs: int) -> None:
        """Run the frozen backbone once over train and validation (evaluation transform); the loops then read pooled
        features. (The test split is scored by the full model at the end: see finish.)

        Training sees no augmentation on this path: the features of the evaluation view are fixed.
        """
        from .feature_cache import FeatureCache

        acc = self.accelerator
        self.core.to(acc.device)
        cache = FeatureCache(self.core)
        nw = self.recipe["data"]["num_workers"]
        pin = acc.device.type == "cuda"
        features = {}
        for split in ("train", "validation"):
            images = _image_loader(
                dsdict[split], eval_tf, self.data_config, eval_bs, train=False, num_workers=nw, pin_memory=pin
            )
            # each rank extracts its shard; gather_for_metrics inside gives every rank the whole split
            features[split] = cache.get(split, acc.prepare_data_loader(images), acc, progress=self.is_main)
        self.train_loader = _loader(features["train"], self.t["batch_size"], train=True, num_workers=0, pin_memory=pin)
        self.val_loader = _loader(features["validation"], eval_bs, train=False, num_workers=0, pin_memory=pin)
        acc.print(
            f"head feature cache: {len(features['train'])} training features of size {features['train'][0][0].numel()}"
        )

    # ---------------------------------------------------------------------------------------- run directory
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _write_history(self) -> None:
        if self.is_main:
            write_history(self.out, self.state.history)

    def _save_checkpoint(self) -> None:
        """accelerate ``save_state`` into a hidden folder, our state file last, then one atomic rename."""
        acc = self.accelerator
        final = checkpoint_path(self.out, self.state.global_update)
        partial = checkpoint_path(self.out, self.state.global_update, partial=True)
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()
        if self.is_main:
            from .atomic import apply_default_modes

            apply_default_modes(partial)  # save_state writes the weights 0600 (safetensors): make them umask's
            write_checkpoint_state(partial, asdict(self.state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            for old in complete_checkpoints(self.out)[: -self.t["keep_checkpoints"]]:
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def _export(self) -> None:
        from .export import save_model_folder

        if self.is_main:
            save_model_folder(
                self._eval_module(unwrap=True),
                self.out / MODEL_DIR,
                label_names=self.label_names,
                data_config=self.data_config,
                extra_config={
                    "inat_zoo": {"epoch": self.state.best_epoch, "val_accuracy": self.state.best_val_accuracy}
                },
            )
        self.accelerator.wait_for_everyone()

    def _exported_epoch(self) -> int | None:
        return exported_epoch(self.out)

    def _eval_module(self, unwrap: bool = False):
        if self.ema is not None:
            return self.ema.module
        return self.core if unwrap else self.model

    # ------------------------------------------------------------------------------------------------ resume
    def _resume(self) -> None:
        ckpt = self.resume_from
        saved = read_checkpoint_state(ckpt)
        for stage in saved.get("unfrozen", []):
            self._unfreeze(stage)
        self.accelerator.load_state(str(ckpt))
        self.state = TrainerState(**saved)
        if not self.is_main:
            self.state.train_sums = [0.0, 0.0, 0.0]  # the saved sums are totals over all ranks; main carries them
        if self.scheduler is not None:
            self.scheduler.step_update(self.state.global_update)
        self._write_history()
        # The best model is exported right after its epoch's checkpoint; a kill in between leaves model/ stale.
        if self.state.best_epoch == self.state.epoch and self.state.batches_done == 0:
            if self._exported_epoch() != self.state.best_epoch:
                self._export()
        self.accelerator.print(f"resumed from {ckpt} (epoch {self.state.epoch}, update {self.state.global_update})")

    def _unfreeze(self, stage: str) -> None:
        """Make ``stage`` trainable, add its parameters to the optimizer (timm's grouping), rebuild the schedule."""
        from .freeze import unfreeze

        acc = self.accelerator
        new = {id(p) for p in unfreeze(self.core, stage)}
        if self.ema is not None:
            unfreeze(self.ema.module, stage)
        inner = self.optimizer.optimizer
        for group in _param_groups(self.core, self.recipe):
            params = [p for p in group["params"] if id(p) in new]
            if params:
                inner.add_param_group({**{k: v for k, v in group.items() if k != "param_names"}, "params": params})
        if acc.num_processes > 1:
            self._rewrap_ddp()
        self.scheduler = _create_scheduler(inner, self.recipe, self.updates_per_epoch)
        if self.scheduler is not None:
            self.scheduler.step_update(self.state.global_update)
        self.trainable_params = sum(p.numel() for p in self.core.parameters() if p.requires_grad)
        if stage not in self.state.unfrozen:
            self.state.unfrozen.append(stage)
        acc.print(f"unfroze {stage}: {self.trainable_params:,} trainable parameters")

    def _rewrap_ddp(self) -> None:
        """DDP only reduces gradients of parameters that were trainable when it wrapped the model: wrap it anew.

        Done as accelerate's ``prepare_model`` does (same DDP kwargs and comm hook); the new wrapper replaces the old
        one in the accelerator's model list so ``save_state``/``load_state`` keep seeing one model.
        """
        import torch
        from torch.nn.parallel import DistributedDataParallel

        acc = self.accelerator
        index = next(
            i for i, m in enumerate(acc._models) if acc.unwrap_model(m, keep_torch_compile=False) is self.core
        )
        handler = acc.ddp_handler
        device_ids = [acc.local_process_index] if acc.device.type == "cuda" else None
        model = DistributedDataParallel(
            self.core,
            device_ids=device_ids,
            output_device=device_ids[0] if device_ids else None,
            **(handler.to_kwargs() if handler is not None else {}),
        )
        if handler is not None:
            handler.register_comm_hook(model)
        if self.t["compile"]:
            model = torch.compile(model)
        acc._models[index] = self.model = model

    # -------------------------------------------------------------------------------------------- the loop
    def evaluate(self, loader, desc: str) -> dict:
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        acc = self.accelerator
        module = self._eval_module()
        module.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        correct = torch.zeros((), dtype=torch.int64, device=acc.device)
        count = 0
        with torch.inference_mode(), acc.autocast():
            for batch in tqdm(loader, desc=desc, disable=not self.is_main, leave=False, dynamic_ncols=True):
                x, y = self._inputs(batch)
                logits = module(x)
                logits, y = acc.gather_for_metrics((logits.float(), y))
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                count += y.numel()
        return {
            "accuracy": correct.item() / max(count, 1),
            "loss": loss_sum.item() / max(count, 1),
            "num_samples": count,
        }

    def _inputs(self, batch):
        import torch

        x, y = (batch["pixel_values"], batch["label"]) if isinstance(batch, dict) else batch
        if self.t["channels_last"] and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_epoch(self, epoch: int) -> dict:
        import torch
        from tqdm.auto import tqdm

        acc, st = self.accelerator, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if st.batches_done:
            loader = acc.skip_first_batches(self.train_loader, st.batches_done)
        dev = acc.device
        loss_sum = torch.tensor(st.train_sums[0], dtype=torch.float64, device=dev)
        correct = torch.tensor(st.train_sums[1], dtype=torch.float64, device=dev)
        count = torch.tensor(st.train_sums[2], dtype=torch.float64, device=dev)
        every = self.t["checkpoint_every_steps"]
        clip = self.t["clip_grad"]
        start = time.perf_counter() - st.epoch_time_s
        loop_start = time.perf_counter()
        total = len(self.train_loader)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            total=total,
            initial=st.batches_done,
            disable=not self.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        for batch in bar:
            x, y = self._inputs(batch)
            with acc.accumulate(self.model):
                logits = self.model(x)
                loss = self.criterion(logits, y)
                acc.backward(loss)
                if clip is not None and acc.sync_gradients:
                    acc.clip_grad_norm_(self.model.parameters(), clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            st.batches_done += 1
            n = y.numel()
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            count += n
            if acc.sync_gradients:
                st.global_update += 1
                if self.scheduler is not None:
                    self.scheduler.step_update(st.global_update)
                if self.ema is not None:
                    self.ema.update(self.core, step=st.global_update)
                if self.log_every and st.global_update % self.log_every == 0:  # .item() syncs: only when tracked
                    acc.log({"train/loss": loss.item(), "train/lr": _current_lr(self.optimizer)}, st.global_update)
                if every and st.global_update % every == 0 and st.batches_done < total:
                    st.loop_time_s += time.perf_counter() - loop_start
                    loop_start = time.perf_counter()
                    st.train_sums = acc.reduce(torch.stack([loss_sum, correct, count]), "sum").tolist()
                    st.epoch_time_s = time.perf_counter() - start
                    self._save_checkpoint()
        st.loop_time_s += time.perf_counter() - loop_start
        sums = acc.reduce(torch.stack([loss_sum, correct, count]), "sum").tolist()
        return {"loss": sums[0] / max(sums[2], 1), "accuracy": sums[1] / max(sums[2], 1), "count": sums[2]}

    def fit(self) -> dict:
        acc = self.accelerator
        track = self.recipe["track"]
        if track["wandb"]:
            init = {"mode": track["mode"], "dir": str(self.out)}
            if track["run_name"]:
                init["name"] = track["run_name"]
            acc.init_trackers(track["project"], config=_flat(self.recipe), init_kwargs={"wandb": init})
        if self.resume_from is not None:
            self._resume()
        st = self.state
        epochs = self.t["epochs"]
        schedule = self.recipe["model"]["unfreeze"]
        while st.epoch < epochs:
            epoch = st.epoch + 1
            for item in schedule:
                if item["epoch"] == epoch and item["stage"] not in st.unfrozen:
                    self._unfreeze(item["stage"])
            started = time.perf_counter() - st.epoch_time_s
            images_before = st.train_sums[2]
            train_metrics = self.train_epoch(epoch)
            st.images_seen += int(train_metrics["count"] - images_before)
            val = self.evaluate(self.val_loader, "validation")
            elapsed = time.perf_counter() - started
            lr = _current_lr(self.optimizer)
            record = {
                "epoch": epoch,
                "train_loss": train_metrics["loss"],
                "train_accuracy": train_metrics["accuracy"],
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": lr,
                "epoch_time_s": elapsed,
            }
            st.history.append(record)
            st.val_num_samples = val["num_samples"]
            st.train_time_s += elapsed
            st.epoch, st.batches_done, st.epoch_time_s, st.train_sums = epoch, 0, 0.0, [0.0, 0.0, 0.0]
            improved = val["accuracy"] > st.best_val_accuracy
            if improved:
                st.best_epoch, st.best_val_accuracy = epoch, val["accuracy"]
            self._write_history()
            self._save_checkpoint()
            if improved:
                self._export()
            acc.log({f"epoch/{k}": v for k, v in record.items()}, step=st.global_update)
            acc.print(
                f"epoch {epoch}/{epochs}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
                f"val loss {val['loss']:.4f} acc {val['accuracy']:.4f}{' *' if improved else ''}  "
                f"lr {lr:.2e}  {elapsed:.1f}s"
            )
            if self.epoch_callback is not None and self.is_main:
                self.epoch_callback(epoch, dict(record))
        return self.finish()

    def finish(self) -> dict:
        """Evaluate the test split once with the exported best model, then write metrics.json.

        The test pass is :func:`inat_zoo.evaluate.final_test_metrics`: the exported ``model/`` loaded as
        ``inat-zoo evaluate`` loads it, the original test images, the one evaluation rule (float32, full decode,
        fixed batches), whatever this run's training pipeline was (prepared cache, feature cache, mixed precision,
        EMA, channels_last, compile). ``metrics["test"]`` is that function's result, unchanged.
        """
        from .evaluate import final_test_metrics, scalar_metrics

        acc, st = self.accelerator, self.state
        acc.wait_for_everyone()  # model/ holds the best epoch on every rank's view of the disk
        record = st.history[st.best_epoch - 1]
        val = {"accuracy": record["val_accuracy"], "loss": record["val_loss"], "num_samples": st.val_num_samples}
        test = final_test_metrics(
            self.out, accelerator=acc, num_workers=self.recipe["data"]["num_workers"], progress=self.is_main
        )
        metrics = {
            "model": self.recipe["model"]["name"],
            "freeze": self.recipe["model"]["freeze"],
            "params": self.params_total,
            "trainable_params": self.trainable_params,
            "best_epoch": st.best_epoch,
            "epochs": st.epoch,
            "validation": val,
            "test": test,
            "world_size": acc.num_processes,
            "train_time_s": st.train_time_s,
            "images_per_s": st.images_seen / st.loop_time_s if st.loop_time_s else None,
        }
        if self.is_main:
            write_metrics(self.out, metrics)
        acc.log({f"test/{k}": v for k, v in scalar_metrics(test).items()}, step=st.global_update)
        acc.print(
            f"best epoch {st.best_epoch}: validation acc {val['accuracy']:.4f}, "
            f"test acc {test['accuracy']:.4f} ({test['num_samples']} images); run directory {self.out}"
        )
        return metrics


def _current_lr(optimizer) -> float:
    """The largest lr across groups (the head's under layer decay), what a person means by 'the lr'."""
    return max(g["lr"] for g in optimizer.param_groups)


def train(recipe: dict, *, epoch_callback: EpochCallback | None = None) -> dict:
    """Run one training from a recipe (validated here again) and return the content of metrics.json.

    Everything the user can get wrong is checked before the first file is written (:func:`preflight`).
    ``epoch_callback(epoch, record)`` runs on the main process after each epoch; an exception from it stops
    training and propagates.
    """
    recipe = validate_recipe(recipe)
    check_data_root(recipe)
    resume_from = check_run_directory(recipe)
    preflight(recipe)
    trainer = _Trainer(recipe, resume_from, epoch_callback)
    acc = trainer.accelerator
    acc.wait_for_everyone()  # every rank has checked the run directory before anyone writes into it
    lock = None
    try:
        if acc.is_main_process:
            out = trainer.out
            out.mkdir(parents=True, exist_ok=True)
            lock = lock_run_directory(out)
            for leftover in partial_checkpoints(out):
                shutil.rmtree(leftover, ignore_errors=True)
            if resume_from is None and stopped_before_first_checkpoint(out):
                acc.print(f"{out} holds a start that stopped before its first checkpoint: starting afresh")
                forget_history(out)
            write_recipe(out, dump_recipe(recipe))
        acc.wait_for_everyone()
        return trainer.fit()
    finally:
        acc.end_training()
        if lock is not None:
            lock.close()


# -------------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=3e-4")


def run_cli(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    train(recipe)
    return 0


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
