"""The DataLoader the trainer and the evaluator read images through: batches normalised once, in the collate.

``with_image_transform`` alone gives float items that the default collate copies into a batch; here the items stay
uint8 crops until :class:`~inat_zoo.data.batched.ImageCollate` stacks and normalises them in one pass (in the
worker processes when ``num_workers > 0``). Same batches, same random draws, less memory traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .batched import BatchedTransform, ImageCollate
from .transforms import with_image_transform

if TYPE_CHECKING:
    import datasets
    import torch
    from PIL import Image as PILImage


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
    **loader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``split`` (``image`` and ``label`` columns) yielding
    ``{"pixel_values": FloatTensor[B, C, H, W], "label": LongTensor[B]}``, as ``with_image_transform`` + the default
    collate would, with the transform's tensor tail run once per batch. Extra keywords go to ``DataLoader``."""
    from torch.utils.data import DataLoader

    dataset = with_image_transform(split, transform, data_config, defer_tail=True)
    loader_kwargs.setdefault("persistent_workers", num_workers > 0)  # workers keep their state across epochs
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=ImageCollate(BatchedTransform.from_transform(transform)),
        **loader_kwargs,
    )
