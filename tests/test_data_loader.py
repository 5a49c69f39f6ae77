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
    # neither loader draws its worker base seed from the global RNG: the transforms see the same stream
    reference = torch.utils.data.DataLoader(
        with_image_transform(split, transform, CONFIG), batch_size=8, generator=torch.Generator()
    )
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


AUGMENT = {"color_jitter": 0.4, "re_prob": 0.5, "vflip": 0.5}  # every kind of random step: crop, flips, tail


def _epoch(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _by_index(batches: list[dict], keys: list) -> dict[int, torch.Tensor]:
    pixels = torch.cat([b["pixel_values"] for b in batches])
    return {key.index: image for key, image in zip(keys, pixels, strict=True)}


def test_shuffled_loader_is_a_function_of_seed_epoch_and_index_only(splits):
    """The promise behind exact resume: workers, batch size, the global RNG and where an epoch starts change
    nothing; the epoch and the seed change everything."""
    transform = create_image_transform(CONFIG, True, AUGMENT)
    split = splits["train"]

    def loader(**kwargs):
        options = {"batch_size": 8, "shuffle": True, "seed": 3, **kwargs}
        return create_image_loader(split, transform, CONFIG, **options)

    serial = loader()
    serial.sampler.set_epoch(2)
    keys = list(serial.sampler)
    torch.manual_seed(0)
    random.seed(0)
    state = torch.get_rng_state(), random.getstate()
    reference = _epoch(serial, 2)
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]  # caller's RNG untouched
    assert sorted(k.index for k in keys) == list(range(len(split)))
    for batch, start in zip(reference, range(0, len(keys), 8), strict=True):
        assert batch["label"].tolist() == [split[k.index]["label"] for k in keys[start : start + 8]]
    torch.manual_seed(123)  # another global state: nothing changes
    for other in (_epoch(loader(num_workers=2), 2), _epoch(loader(num_workers=1), 2)):
        assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(other, reference, strict=True))
    # another batch size groups other samples: each sample's pixels (head and tail) are still its own
    expected = _by_index(reference, keys)
    regrouped = _by_index(_epoch(loader(batch_size=5), 2), keys)
    assert all(torch.equal(regrouped[i], expected[i]) for i in expected)
    # a resumed epoch skips its first batches: the rest are the same batches
    from accelerate.data_loader import skip_first_batches

    resumed = skip_first_batches(serial, 3)
    serial.sampler.set_epoch(2)
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(resumed, reference[3:], strict=True))
    # a new epoch: a new order and new augmentation of the same sample
    serial.sampler.set_epoch(3)
    next_keys = list(serial.sampler)
    assert [k.index for k in next_keys] != [k.index for k in keys]
    assert not torch.equal(_by_index(_epoch(serial, 3), next_keys)[0], expected[0])
    other_seed = create_image_loader(split, transform, CONFIG, batch_size=8, shuffle=True, seed=4)
    assert not torch.equal(_epoch(other_seed, 2)[0]["pixel_values"], reference[0]["pixel_values"])
