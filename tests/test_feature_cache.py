"""Head-only training on cached features: exact logits, the same training trajectory, a cache that can be trusted."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import inat_zoo  # noqa: F401  (registers inat_flexible_cnn)
from inat_zoo.feature_cache import (
    FeatureCache,
    HeadOnly,
    extract_features,
    feature_cut,
    why_no_feature_cache,
)
from inat_zoo.freeze import apply_freeze, trainable_parameters

from .model_helpers import backbone_features

SIZE = 32


def _load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample split as tensors under a timm evaluation transform (the transform the cache is meant for)."""
    transform = timm.data.create_transform(input_size=(3, SIZE, SIZE), crop_pct=1.0, interpolation="bilinear")
    classes = sorted(p.name for p in (root / "train").iterdir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).glob("*.jpg")):
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def sample_tensors(sample_root):
    return {split: _load_split(sample_root, split) for split in ("train", "val")}


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


MODELS = {
    "resnet18": dict(name="resnet18"),
    "flexible_cnn": dict(name="inat_flexible_cnn", filters=[8, 16, 32, 64, 128], dense_size=64, img_size=SIZE),
    "flexible_cnn_flatten": dict(name="inat_flexible_cnn_flatten", filters=8, dense_size=32, img_size=SIZE),
}


@pytest.mark.parametrize(
    "key, cut, feature_shape",
    [("resnet18", "pre_logits", (512,)), ("flexible_cnn", "pooled", (128,)), ("flexible_cnn_flatten", "pooled", (8,))],
)
def test_head_only_on_features_equals_the_full_model(key, cut, feature_shape):
    model = apply_freeze(_model(**MODELS[key]), "head")
    assert feature_cut(model) == cut
    head = HeadOnly(model)
    # the head shares the model's parameter objects: training it trains the model that gets exported
    assert {id(p) for p in trainable_parameters(model)} <= {id(p) for p in head.parameters()}
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if id(p) not in {id(q) for q in head.parameters()}
    )

    x = torch.randn(5, 3, SIZE, SIZE)
    model.eval(), head.eval()
    feats = backbone_features(model, x)
    assert feats.shape == (5, *feature_shape) and feats.grad_fn is None
    torch.testing.assert_close(head(feats), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["none", "until:layer3"])
def test_models_with_a_trainable_backbone_have_no_cache(strategy):
    model = apply_freeze(_model("resnet18"), strategy)
    assert "freeze: head" in why_no_feature_cache(model)
    with pytest.raises(ValueError, match="head feature cache unavailable"):
        HeadOnly(model)


def _train(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, forward) -> None:
    """The same loop for both paths: AdamW over the trainable parameters, a seeded shuffle, seeded dropout."""
    torch.manual_seed(123)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=3e-3, weight_decay=0.0)
    loader = DataLoader(
        TensorDataset(inputs, labels), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("key", ["resnet18", "flexible_cnn"])
def test_cached_path_trains_like_the_slow_path(key, sample_tensors):
    (x_train, y_train), (x_test, y_test) = sample_tensors["train"], sample_tensors["val"]
    epochs = 2  # the slow path pays the frozen backbone every epoch
    slow = apply_freeze(_model(**MODELS[key]), "head")
    fast = copy.deepcopy(slow)

    # slow path: the full model, in train mode, every epoch (frozen BN and the frozen prefix are inert)
    slow.train()
    _train(slow, x_train, y_train, epochs, slow)
    # fast path: backbone once, then the head only, on the cached features
    feats, labels = extract_features(fast, DataLoader(TensorDataset(x_train, y_train), batch_size=40), progress=False)
    assert torch.equal(labels, y_train) and len(feats) == len(x_train)
    head = HeadOnly(fast).train()
    _train(fast, feats, labels, epochs, head)

    fast_state, slow_state = fast.state_dict(), slow.state_dict()
    for name in fast_state:  # the same trajectory, up to float rounding
        torch.testing.assert_close(fast_state[name], slow_state[name], rtol=1e-3, atol=1e-4, msg=name)
    acc_fast, acc_slow = _accuracy(fast, x_test, y_test), _accuracy(slow, x_test, y_test)
    assert abs(acc_fast - acc_slow) <= 1 / len(y_test) + 1e-6
    # and the head does learn from the cached features (random frozen backbone; chance is 0.1)
    _train(fast, feats, labels, 40, head.train())
    assert _accuracy(fast, x_train, y_train) > 0.3


class _MustNotIterate:
    """A dataloader that fails when read: proves a result came from the cache."""

    def __iter__(self):
        raise AssertionError("features were extracted again instead of being read from the cache")


def test_feature_cache_memory(sample_tensors):
    x, y = sample_tensors["val"]
    model = apply_freeze(_model(**MODELS["flexible_cnn"]), "head")
    cache = FeatureCache(model)
    first = cache.get("test", DataLoader(TensorDataset(x, y), batch_size=16), progress=False)
    assert cache.get("test", _MustNotIterate()) is first  # memory
    assert len(first) == len(y) and torch.equal(first.tensors[1], y)


def test_extract_features_through_an_accelerator(sample_tensors):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    x, y = sample_tensors["val"]
    model = apply_freeze(_model(**MODELS["flexible_cnn"]), "head")
    plain, _ = extract_features(model, DataLoader(TensorDataset(x, y), batch_size=16), progress=False)
    try:
        accelerator = Accelerator(cpu=True)
        # dict batches, as a datasets-backed loader yields them; 40 samples in batches of 16: a ragged last batch
        loader = accelerator.prepare(
            DataLoader([{"pixel_values": a, "label": b} for a, b in zip(x, y, strict=True)], batch_size=16)
        )
        feats, labels = extract_features(model, loader, accelerator, progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # later tests may launch their own processes
    assert torch.equal(labels, y)
    torch.testing.assert_close(feats, plain)


def test_unsupported_batch_format():
    model = apply_freeze(_model(**MODELS["flexible_cnn"]), "head")
    with pytest.raises(TypeError, match="need one of"):
        extract_features(model, [{"img": torch.zeros(1, 3, SIZE, SIZE), "y": torch.zeros(1)}], progress=False)
