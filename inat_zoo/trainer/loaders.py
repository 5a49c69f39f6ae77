"""The data side of a run: splits, transforms, the image loaders, and the head feature cache switch."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe_schema import Recipe


def load_splits(recipe: Recipe, accelerator):
    """The train / validation / test splits of ``data.root`` (``load_inat12k``), resized into the prepared Arrow
    cache when ``data.prepared_cache`` asks (after the model is known: see :func:`prepare_splits`)."""
    from ..data import load_inat12k

    data = recipe.data
    with accelerator.main_process_first():  # one process fills the datasets cache, the others reuse it
        return load_inat12k(data.root, val_fraction=data.val_fraction, seed=recipe.seed, strict=data.strict)


def prepare_splits(splits, recipe: Recipe, data_config: dict, accelerator):
    """``data.prepared_cache``: the splits decoded once at the short side the crops need; else unchanged."""
    if not recipe.data.prepared_cache:
        return splits
    from ..data import prepare_dataset
    from ..data.transforms import decode_short_side

    with accelerator.main_process_first():
        return prepare_dataset(splits, short_side=decode_short_side(data_config))


def _loader_options(size: int, batch_size: int, train: bool) -> dict:
    # a last batch of 1 breaks BatchNorm in train mode
    return {"batch_size": batch_size, "shuffle": train, "drop_last": train and size > batch_size}


def feature_loader(dataset, batch_size: int, *, train: bool, num_workers: int, pin_memory: bool):
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


def train_labels(splits) -> list[int]:
    """The class index of every row of the train split, in row order."""
    return list(splits["train"]["label"])


def image_loader(
    split, transform, data_config, batch_size: int, *, train: bool, num_workers: int, pin_memory: bool, seed=None,
    balanced_labels=None,
):  # fmt: skip
    """Images through the fast decoder; for training, shuffled (or drawn class-balanced with ``balanced_labels``) and
    each sample's augmentation seeded by (seed, epoch, index)."""
    from ..data import create_image_loader

    options = _loader_options(len(split), batch_size, train)
    return create_image_loader(
        split, transform, data_config, **options, num_workers=num_workers, pin_memory=pin_memory, seed=seed,
        balanced_labels=balanced_labels,
    )  # fmt: skip


def eval_batch_size(recipe: Recipe) -> int:
    """Images per evaluation batch: ``train.eval_batch_size``, else ``train.batch_size``."""
    return recipe.train.eval_batch_size or recipe.train.batch_size


def image_loaders(splits, recipe: Recipe, data_config: dict):
    """``(train_loader, val_loader, eval_transform)`` over images; the test split is scored once, at the end, by the
    one evaluation function (:meth:`inat_zoo.trainer.loop.Trainer.finish`), not by a loader here. The train loader
    draws class-balanced batches with ``data.sampler: balanced``. Raises :class:`UsageError` for mixup over a train
    split smaller than one batch (its one batch could be odd)."""
    import torch

    from ..data import create_image_transform

    train_transform = create_image_transform(data_config, is_training=True, augment=recipe.data.augment)
    eval_transform = create_image_transform(data_config, is_training=False)
    pin_memory = torch.cuda.is_available()
    num_workers = recipe.data.num_workers
    batch_size = recipe.train.batch_size
    if recipe.train.mixup is not None and len(splits["train"]) < batch_size:
        raise UsageError(
            f"train.mixup needs full, even batches: the train split has {len(splits['train'])} images, fewer than "
            f"train.batch_size={batch_size}"
        )
    train_loader = image_loader(
        splits["train"],
        train_transform,
        data_config,
        batch_size,
        train=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        seed=recipe.seed,
        balanced_labels=train_labels(splits) if recipe.data.sampler == "balanced" else None,
    )
    val_loader = image_loader(
        splits["validation"],
        eval_transform,
        data_config,
        eval_batch_size(recipe),
        train=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return train_loader, val_loader, eval_transform


def feature_cache_wanted(model, recipe: Recipe, accelerator) -> bool:
    """``train.head_feature_cache``; ``auto``: for freeze=head when the model allows the cut, nothing needs the full
    model in the loop (EMA, unfreezing, distillation), the recipe asks for no augmentation of its own
    (``data.augment``) nor mixing of images (``train.mixup``), and the batches come from the image loader's sampler
    (``data.sampler: balanced``). Class weights keep the cache: they weigh the loss, which is the same over
    features. Raises :class:`UsageError` when ``true`` is asked and not possible."""
    from ..feature_cache import why_no_feature_cache

    setting = recipe.train.head_feature_cache
    if setting is False or recipe.model.freeze.kind != "head":
        if setting is True:
            raise UsageError("train.head_feature_cache=true needs model.freeze=head")
        return False
    reason = why_no_feature_cache(model)
    if reason is None and recipe.train.ema is not False:
        reason = "train.ema averages the whole model"
    if reason is None and recipe.train.distill is not None:
        reason = "train.distill feeds the teacher the training images"
    if reason is None and recipe.model.unfreeze:
        reason = "model.unfreeze changes the frozen part"
    if reason is None and recipe.data.augment:
        # the recipe asks for augmentation that fixed features of the evaluation view cannot give
        reason = f"data.augment sets {', '.join(sorted(recipe.data.augment))}"
    if reason is None and recipe.train.mixup is not None:
        reason = "train.mixup mixes images (and CutMix cuts them), not fixed features"
    if reason is None and recipe.data.sampler == "balanced":
        reason = "data.sampler=balanced draws the training images, and cached features are read in their own order"
    if reason is not None:
        if setting is True:
            raise UsageError(f"train.head_feature_cache=true is not possible: {reason}")
        accelerator.print(f"head feature cache off: {reason}")
        return False
    return True


def cached_feature_loaders(model, splits, eval_transform, data_config: dict, recipe: Recipe, accelerator):
    """Run the frozen backbone once over train and validation (evaluation transform); returns ``(train_loader,
    val_loader)`` over pooled features. (The test split is scored by the full model at the end.)

    Training sees no augmentation on this path: the features of the evaluation view are fixed.
    """
    from ..feature_cache import FeatureCache

    model.to(accelerator.device)
    cache = FeatureCache(model)
    num_workers = recipe.data.num_workers
    batch_size = eval_batch_size(recipe)
    pin_memory = accelerator.device.type == "cuda"
    features = {}
    for split in ("train", "validation"):
        images = image_loader(
            splits[split], eval_transform, data_config, batch_size, train=False, num_workers=num_workers,
            pin_memory=pin_memory,
        )  # fmt: skip
        # each rank extracts its shard; gather_for_metrics inside gives every rank the whole split
        loader = accelerator.prepare_data_loader(images)
        features[split] = cache.get(split, loader, accelerator, progress=accelerator.is_main_process)
    train_batch_size = recipe.train.batch_size
    train_loader = feature_loader(
        features["train"], train_batch_size, train=True, num_workers=0, pin_memory=pin_memory
    )
    val_loader = feature_loader(features["validation"], batch_size, train=False, num_workers=0, pin_memory=pin_memory)
    accelerator.print(
        f"head feature cache: {len(features['train'])} training features of size {features['train'][0][0].numel()}"
    )
    return train_loader, val_loader
