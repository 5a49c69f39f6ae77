"""create_image_loader: the transform's tensor tail in the collate gives the same batches as per-item transforms."""

from __future__ import annotations

import random

import pytest
import torch

from inat_zoo.data import create_image_loader, create_image_transform, load_inat12k, with_image_transform

CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@pytest.fixture(scope="module")
def splits(sample_root):
    return load_inat12k(sample_root, val_fraction=0.25, seed=0)


def _batches(loader, seed: int) -> list[dict]:
    random.seed(seed)
    torch.manual_seed(seed)
    return list(loader)


@pytest.mark.parametrize(
    "is_training, augment",
    [
        (False, None),
        (True, None),
        (True, {"color_jitter": 0.4, "re_prob": 0.5, "vflip": 0.5}),  # random tail steps: same draws, same order
    ],
)
def test_loader_batches_equal_per_item_transform_batches(splits, is_training, augment):
    transform = create_image_transform(CONFIG, is_training, augment)
    split = splits["validation"]
    reference = torch.utils.data.DataLoader(with_image_transform(split, transform, CONFIG), batch_size=8)
    loader = create_image_loader(split, transform, CONFIG, batch_size=8)
    ours, theirs = _batches(loader, 5), _batches(reference, 5)
    assert len(ours) == len(theirs) == -(-len(split) // 8)
    for a, b in zip(ours, theirs, strict=True):
        assert a["pixel_values"].dtype == torch.float32 and a["pixel_values"].shape[1:] == (3, 32, 32)
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["label"], b["label"])
    if is_training:
        other = _batches(loader, 6)
        assert not torch.equal(other[0]["pixel_values"], ours[0]["pixel_values"])  # new seed, new augmentation


def test_loader_items_stay_uint8_until_the_collate(splits):
    transform = create_image_transform(CONFIG, True)
    loader = create_image_loader(splits["train"], transform, CONFIG, batch_size=4)
    item = loader.dataset[0]
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (32, 32, 3)


def test_loader_runs_in_workers_and_shuffles(splits):
    transform = create_image_transform(CONFIG, True)
    loader = create_image_loader(splits["train"], transform, CONFIG, batch_size=8, shuffle=True, num_workers=2)
    labels = []
    for batch in loader:  # dataset and collate pickled into two worker processes
        assert batch["pixel_values"].shape[1:] == (3, 32, 32)
        assert batch["pixel_values"].abs().max() < 5  # normalised, not 0-255
        labels += batch["label"].tolist()
    assert sorted(labels) == sorted(splits["train"]["label"]) and labels != splits["train"]["label"]
    assert loader.persistent_workers  # the default with workers; DataLoader keywords still pass through:
    assert not create_image_loader(splits["train"], transform, CONFIG, batch_size=8, num_workers=2,
                                   persistent_workers=False).persistent_workers  # fmt: skip


def test_loader_accepts_a_plain_callable(splits):
    def tiny(img):
        return torch.full((3, 4, 4), float(img.size[0]))

    loader = create_image_loader(splits["test"], tiny, CONFIG, batch_size=5)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (5, 3, 4, 4) and batch["label"].shape == (5,)


def test_collate_builds_batches_in_shared_memory_inside_workers(splits, monkeypatch):
    """In a worker, the batch is born in shared memory (as default_collate's): no 19 MB copy per batch on return."""
    from inat_zoo.data.batched import BatchedTransform, ImageCollate

    transform = create_image_transform(CONFIG, is_training=False)
    items = [with_image_transform(splits["test"], transform, CONFIG, defer_tail=True)[i] for i in range(4)]
    collate = ImageCollate(BatchedTransform.from_transform(transform))
    in_main = collate(items)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as seen from a worker process
    in_worker = collate(items)
    assert not in_main["pixel_values"].is_shared() and in_worker["pixel_values"].is_shared()
    assert torch.equal(in_main["pixel_values"], in_worker["pixel_values"])
    assert in_worker["pixel_values"].shape == (4, 3, 32, 32) and in_worker["pixel_values"].is_contiguous()
