"""Freeze strategies: the right parameters train, frozen weights and BN statistics never move, no autograd state."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers.norm_act import FrozenBatchNorm2d

import inat_zoo  # noqa: F401  (registers inat_flexible_cnn)
from inat_zoo.errors import UsageError
from inat_zoo.freeze import (
    apply_freeze,
    check_schedule,
    check_strategy,
    model_stages,
    trainable_parameters,
    unfreeze,
)

from .model_helpers import frozen_stages, parameter_counts, trainable_parameter_count

RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
FLEX_STAGES = ["stages.0", "stages.1", "stages.2", "stages.3", "stages.4", "head"]


@functools.cache
def _pristine(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _resnet18() -> nn.Module:
    return copy.deepcopy(_pristine("resnet18"))  # a copy is much cheaper than initialising 11M weights again


def _resnet50() -> nn.Module:
    return copy.deepcopy(_pristine("resnet50"))


def _flexible_cnn() -> nn.Module:
    return copy.deepcopy(_pristine("inat_flexible_cnn", filters=8, img_size=64))


# strategy -> name prefixes of the parameters that must still train
CASES = [
    (_resnet18, "none", ("",)),
    (_resnet18, "head", ("fc.",)),
    (_resnet18, "until:layer3", ("layer4.", "fc.")),
    (_resnet18, "until:stem", ("layer1.", "layer2.", "layer3.", "layer4.", "fc.")),
    (_resnet50, "until:layer3", ("layer4.", "fc.")),
    (_flexible_cnn, "head", ("head.",)),
    (_flexible_cnn, "until:stages.2", ("stages.3.", "stages.4.", "head.")),
    (_flexible_cnn, "until:stem", ("stages.1.", "stages.2.", "stages.3.", "stages.4.", "head.")),
]


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _train_step(model: nn.Module, size: int = 32, steps: int = 2) -> None:
    model.train()
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, size, size, generator=gen) * 2 + 0.5  # off-centre so BN stats move if they can
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make, strategy, trainable_prefixes", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_apply_freeze_trains_only_the_unfrozen_stages(make, strategy, trainable_prefixes):
    model = make()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    total_before = sum(p.numel() for p in model.parameters())

    assert apply_freeze(model, strategy) is model  # in place, the same object

    names = dict(model.named_parameters())
    trains = {n for n, p in names.items() if p.requires_grad}
    assert trains == {n for n in names if n.startswith(trainable_prefixes)}
    assert parameter_counts(model) == (total_before, sum(names[n].numel() for n in trains))
    assert trainable_parameter_count(model) == sum(names[n].numel() for n in trains)
    state = model.state_dict()
    # frozen BN keeps BatchNorm's keys (less num_batches_tracked), so an export loads strictly into a fresh model
    assert state.keys() == {
        k for k in original if k.startswith(trainable_prefixes) or not k.endswith("num_batches_tracked")
    }
    assert all(torch.equal(state[k], original[k]) for k in state)  # freezing changes no value
    make().load_state_dict(state, strict=True)
    frozen_bn = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert all(not n.startswith(trainable_prefixes) for n in frozen_bn)
    if strategy != "none":
        assert frozen_bn, "frozen stages must use FrozenBatchNorm2d"

    _train_step(model)

    after = model.state_dict()
    for key, before in original.items():
        if key not in after:
            continue
        frozen = not key.startswith(trainable_prefixes)
        moved = not torch.equal(after[key], before)
        if frozen:  # weights AND running statistics of frozen stages stay exactly put under model.train()
            assert not moved, f"{key} of a frozen stage changed"
        elif key.endswith(("weight", "bias", "running_mean", "running_var")):
            assert moved, f"{key} should train (or track statistics) but did not change"


def test_resnet50_stage_names_and_freezing_on_meta():
    model = timm.create_model("resnet50", pretrained=False, num_classes=10, device="meta")
    assert [s.name for s in model_stages(model)] == RESNET_STAGES
    apply_freeze(model, "until:layer3")
    assert frozen_stages(model) == ["stem", "layer1", "layer2", "layer3"]
    trains = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {"layer4", "fc"}
    assert isinstance(model.layer3[5].bn3, FrozenBatchNorm2d) and model.layer3[5].bn3.weight.is_meta
    assert isinstance(model.layer4[0].bn1, nn.BatchNorm2d)
    assert parameter_counts(model)[0] == 23_528_522  # resnet50 with a 10-class fc, frozen BN weights included


def test_check_schedule_resolves_a_recipe_on_meta_without_changing_the_model():
    model = timm.create_model("resnet50", pretrained=False, num_classes=10, device="meta")
    check_schedule(model, "head", [(2, "layer4"), (3, "stem")])
    check_schedule(model, "until:layer3", [(2, "layer3")])
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen
    with pytest.raises(UsageError, match="stage 'layer4' is not frozen by model.freeze 'until:layer3'"):
        check_schedule(model, "until:layer3", [(2, "layer4")])
    with pytest.raises(UsageError, match="unknown stage 'stages.2' in model.unfreeze at epoch 2; .*: stem, layer1"):
        check_schedule(model, "head", [(2, "stages.2")])
    with pytest.raises(UsageError, match="unknown stage 'layer9' in freeze strategy 'until:layer9'"):
        check_schedule(model, "until:layer9", [])
    with pytest.raises(UsageError, match="stage 'layer2' is already unfrozen at epoch 2"):
        check_schedule(model, "head", [(2, "layer2"), (4, "layer2")])


def test_flexible_cnn_stages_and_stem_alias():
    stages = model_stages(_flexible_cnn())
    assert [s.name for s in stages] == FLEX_STAGES
    assert stages[0].names == ["stages.0", "stem"]


@pytest.mark.parametrize(
    "make, strategy, listed",
    [
        (_resnet18, "until:layer9", "stem, layer1, layer2, layer3, layer4"),
        (_resnet18, "until:head", "stem, layer1, layer2, layer3, layer4"),
        (_flexible_cnn, "until:layer3", "stages.0 (or stem), stages.1, stages.2, stages.3, stages.4"),
    ],
)
def test_unknown_stage_lists_the_models_stages(make, strategy, listed):
    model = make()
    with pytest.raises(UsageError) as info:
        apply_freeze(model, strategy)
    message = str(info.value)
    assert strategy.split(":")[1] in message and message.endswith(listed)
    assert all(p.requires_grad for p in model.parameters())  # nothing half-applied


@pytest.mark.parametrize("strategy", ["all", "until:", "Head", "until layer3", 3])
def test_bad_strategy_syntax(strategy):
    with pytest.raises(UsageError, match="freeze strategy"):
        check_strategy(strategy)


def test_frozen_prefix_builds_no_autograd_state():
    model = apply_freeze(_resnet18(), "until:layer3").train()
    saved: dict[str, int] = {}
    current = []
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"):
        module = model.get_submodule(name)
        module.register_forward_pre_hook(lambda m, a, name=name: current.append(name))
        module.register_forward_hook(lambda m, a, out: current.pop() and None)  # a hook's return replaces out
    outputs = {}
    model.layer3.register_forward_hook(lambda m, a, out: outputs.setdefault("layer3", out))

    def pack(t):
        saved[current[-1] if current else "<top>"] = saved.get(current[-1] if current else "<top>", 0) + 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(torch.randn(2, 3, 32, 32))
    assert not any(saved.get(n) for n in ("conv1", "bn1", "layer1", "layer2", "layer3")), saved
    assert saved.get("layer4", 0) > 0 and saved.get("fc", 0) > 0  # the trainable part does save activations
    assert outputs["layer3"].grad_fn is None and not outputs["layer3"].requires_grad
    assert logits.requires_grad


def test_unfreeze_restores_training_with_frozen_statistics():
    model = apply_freeze(_resnet18(), "until:layer3")
    frozen_stats = _bn_stats(model)
    new = unfreeze(model, "layer3")

    layer3 = {id(p) for p in model.layer3.parameters()}
    assert {id(p) for p in new} == layer3 and len(new) == len(list(model.layer3.parameters()))
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.layer3.modules())
    assert isinstance(model.layer3[0].bn1, nn.BatchNorm2d)
    assert all(torch.equal(frozen_stats[k], v) for k, v in _bn_stats(model).items())  # statistics carried over
    assert frozen_stages(model) == ["stem", "layer1", "layer2"]
    assert unfreeze(model, "layer3") == []  # already trainable: nothing new for the optimizer

    _train_step(model)
    stats = _bn_stats(model)
    assert not torch.equal(stats["layer3.0.bn1.running_mean"], frozen_stats["layer3.0.bn1.running_mean"])
    assert torch.equal(stats["layer2.0.bn1.running_mean"], frozen_stats["layer2.0.bn1.running_mean"])


def test_unfreeze_unknown_stage():
    model = apply_freeze(_flexible_cnn(), "head")
    with pytest.raises(UsageError, match=r"unknown stage 'layer4' in unfreeze; .*stages\.4"):
        unfreeze(model, "layer4")
