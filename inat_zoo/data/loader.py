"""The DataLoader the trainer and the evaluator read images through: batches normalised once, in the collate.

``with_image_transform`` alone gives float items that the default collate copies into a batch; here the items stay
uint8 crops until :class:`~inat_zoo.data.batched.ImageCollate` stacks and normalises them in one pass (in the
worker processes when ``num_workers > 0``). Same batches, less memory traffic.

A shuffled loader (``shuffle=True``) is also reproducible: its order comes from
:class:`~inat_zoo.data.seeding.EpochSampler` and every sample's augmentation from its own seed (seed, epoch, index),
so the batches are the same whatever ``num_workers``, the process count or where a run was resumed (see
:mod:`inat_zoo.data.seeding`). No loader draws from the global torch RNG when it starts an epoch: each has its own
generator for the worker base seed, so the training loop's own stream (dropout) does not depend on the loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .batched import BatchedTransform, ImageCollate
from .transforms import ImageBatchTransform, decode_short_side, undecoded_images, with_image_transform

if TYPE_CHECKING:
    import datasets
    import torch
    from PIL import Image as PILImage


class SeededImageDataset:
    """A map-style dataset over an undecoded ``datasets`` split, read by :class:`~inat_zoo.data.seeding.SampleKey`
    (from :class:`~inat_zoo.data.seeding.EpochSampler`): each item's augmentation draws from its own
    :func:`~inat_zoo.data.seeding.sample_seed`. Items are those of ``with_image_transform(..., defer_tail=True)`` plus
    the tail's ``"seed"``, for :class:`~inat_zoo.data.batched.ImageCollate`. Plain integer keys read an item with
    the global RNGs as they stand (evaluation transforms draw nothing)."""

    def __init__(self, split: datasets.Dataset, transform: ImageBatchTransform, seed: int) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        from .seeding import sample_seed

        seeded = all(isinstance(key, tuple) for key in keys)
        indices = [key[1] for key in keys] if seeded else [int(key) for key in keys]
        seeds = [sample_seed(self.seed, *key) for key in keys] if seeded else None  # (epoch, index[, repeat])
        batch = self.transform(self.split[indices], seeds)
        return [{column: values[i] for column, values in batch.items()} for i in range(len(indices))]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        return self.__getitems__([key])[0]


def create_image_loader(
    split: datasets.Dataset,
    transform: Callable[[PILImage.Image], torch.Tensor],
    data_config: Mapping[str, Any],
    *,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int | None = None,
    balanced_labels: Sequence[int] | None = None,
    **loader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``split`` (``image`` and ``label`` columns) yielding
    ``{"pixel_values": FloatTensor[B, C, H, W], "label": LongTensor[B]}``, as ``with_image_transform`` + the default
    collate would, with the transform's tensor tail run once per batch. Extra keywords go to ``DataLoader``.

    ``shuffle=True`` reads the split in the order of an :class:`~inat_zoo.data.seeding.EpochSampler` seeded with
    ``seed`` (default: ``torch.initial_seed()``, the process's seed), each sample augmented from its own seed; call
    ``loader.sampler.set_epoch(epoch)`` (or accelerate's ``set_epoch`` on a prepared loader) before each epoch.
    With ``balanced_labels`` (one class index per row of ``split``), a shuffled loader draws its rows with
    :class:`~inat_zoo.data.seeding.BalancedSampler` instead: every class equally often, seeded the same way.
    """
    import torch
    from torch.utils.data import DataLoader

    from .seeding import BalancedSampler, EpochSampler

    loader_kwargs.setdefault("persistent_workers", num_workers > 0)  # workers keep their state across epochs
    # the worker base seed is drawn from this generator, not from the global RNG the training loop uses
    loader_kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    collate = ImageCollate(BatchedTransform.from_transform(transform))
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "collate_fn": collate, **loader_kwargs}
    if not shuffle:
        dataset = with_image_transform(split, transform, data_config, defer_tail=True)
        return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, **common)
    seed = torch.initial_seed() if seed is None else int(seed)
    batch_transform = ImageBatchTransform(transform, decode_short_side(data_config), defer_tail=True)
    dataset = SeededImageDataset(undecoded_images(split), batch_transform, seed)
    if balanced_labels is not None:
        sampler = BalancedSampler(balanced_labels, seed)
    else:
        sampler = EpochSampler(len(dataset), seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)
