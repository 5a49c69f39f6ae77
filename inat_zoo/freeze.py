"""Freeze strategies over any timm model: ``none``, ``head`` and ``until:<stage>``, plus gradual unfreezing.

Stages come from the model's own ``group_matcher(coarse=True)`` (the grouping timm uses for layer-wise LR decay),
so the same code serves resnets (``stem``, ``layer1`` .. ``layer4``), FlexibleCNN (``stages.0`` .. ``stages.4``,
``stages.0`` is also ``stem``) and any other timm model with a group matcher. Everything the matcher leaves
unmatched is the head (``fc`` for resnets, ``head.*`` for FlexibleCNN).

Freezing uses :func:`timm.utils.freeze`: ``requires_grad=False`` on the parameters and BatchNorm swapped for
``FrozenBatchNorm2d``, so the running statistics stay put under ``model.train()``. Frozen BN keeps its affine
weights as buffers (they leave ``model.parameters()``: a parameter count must add them back), and
its state dict keys are those of ``BatchNorm2d``, so a frozen model saves and loads like an unfrozen one.

Because frozen parameters do not require grad and the input images do not either, the frozen prefix of the network
builds no autograd graph: it saves no activations for backward and costs no backward time. Dropout/drop-path inside
frozen stages still follows ``model.train()``/``model.eval()`` (timm's freeze leaves them alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import timm.utils
import torch
import torch.nn as nn
from timm.models._manipulate import group_with_matcher

from .errors import UsageError
from .recipe_schema import FreezeStrategy

__all__ = [
    "STRATEGY_HELP",
    "Stage",
    "apply_freeze",
    "check_schedule",
    "check_strategy",
    "model_stages",
    "trainable_parameters",
    "unfreeze",
]

STRATEGY_HELP = "none, head or until:<stage> (e.g. until:layer3 for resnets, until:stages.2 for FlexibleCNN)"
_HEAD = "head"


@dataclass
class Stage:
    """One group of the model in forward order: its names (the first is canonical) and what it holds.

    ``modules`` are the largest submodules whose parameters and buffers all belong to this stage; ``loose`` are
    parameters owned directly by the root model (e.g. a ViT's ``cls_token``), which have no submodule to freeze.
    """

    names: list[str]
    modules: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The stage's canonical name (the first of ``names``)."""
        return self.names[0]


def _parse_strategy(strategy: str | FreezeStrategy) -> FreezeStrategy:
    """The strategy as the recipe schema's :class:`FreezeStrategy` (the one parser of the grammar)."""
    if isinstance(strategy, FreezeStrategy):
        return strategy
    try:
        return FreezeStrategy.parse(strategy)
    except ValueError:
        raise UsageError(f"unknown freeze strategy {strategy!r}; use {STRATEGY_HELP}") from None


def check_strategy(strategy: str | FreezeStrategy) -> str | None:
    """Check the syntax of a strategy without a model; returns the stage of ``until:<stage>`` (else None).

    Raises :class:`UsageError` for anything but ``none``, ``head`` or ``until:<stage>``.
    """
    return _parse_strategy(strategy).stage


def _state_names(model: nn.Module) -> list[str]:
    # parameters AND buffers: a frozen BatchNorm holds its affine weights as buffers, and must stay in its stage
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def _matcher(model: nn.Module) -> dict | object:
    if not hasattr(model, "group_matcher"):
        raise UsageError(
            f"model {type(model).__name__} has no group_matcher(), so its stages are unknown; "
            "freeze strategies other than none need a timm model"
        )
    return model.group_matcher(coarse=True)


def _is_matched(name: str, matcher) -> bool:
    """Whether timm's grouping puts ``name`` in a stem/blocks group (unmatched names form the head)."""
    if callable(matcher) and not isinstance(matcher, dict):
        ordinal = matcher(name)
        first = ordinal[0] if isinstance(ordinal, (tuple, list)) else ordinal
        return first != float("inf")
    for spec in matcher.values():
        if spec is None:
            continue
        patterns = [s[0] for s in spec] if isinstance(spec, (tuple, list)) else [spec]
        if any(re.match(p, name) for p in patterns):
            return True
    return False


def _largest_modules(names: list[str], group_of: dict[str, int], group: int) -> tuple[list[str], list[str]]:
    """The largest submodules holding only state of ``group`` (so timm.utils.freeze can take them whole)."""
    groups_under: dict[str, set[int]] = {}
    for n, g in group_of.items():
        parts = n.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            groups_under.setdefault(".".join(parts[:i]), set()).add(g)
    modules, loose = [], []
    for n in names:
        parts = n.split(".")[:-1]
        if not parts:
            loose.append(n)
            continue
        top = next(
            ".".join(parts[:i]) for i in range(1, len(parts) + 1) if groups_under[".".join(parts[:i])] == {group}
        )
        if top not in modules:
            modules.append(top)
    return modules, loose


def model_stages(model: nn.Module) -> list[Stage]:
    """The model's stages in forward order, from timm's coarse group matcher; the last one is ``head``.

    A stage is named after its single submodule (``layer3``, ``stages.2``); the first stage is also ``stem``.
    """
    matcher = _matcher(model)
    names = _state_names(model)
    head_names = [n for n in names if not _is_matched(n, matcher)]
    body = [n for n in names if n not in set(head_names)]
    group_of = group_with_matcher(((n, None) for n in body), matcher, reverse=True)
    group_of.update({n: -1 for n in head_names})
    ordered: dict[int, list[str]] = {}
    for n in body:
        ordered.setdefault(group_of[n], []).append(n)
    stages = []
    for i, group in enumerate(sorted(ordered)):
        modules, loose = _largest_modules(ordered[group], group_of, group)
        single = modules[0] if len(modules) == 1 and not loose else None
        if i == 0:  # the stem: named after its module when it is one (stages.0), always also "stem"
            stage_names = [single, "stem"] if single and single != "stem" else ["stem"]
        else:
            stage_names = [single or "+".join(modules + loose)]
        stages.append(Stage(stage_names, modules, loose))
    if head_names:
        modules, loose = _largest_modules(head_names, group_of, -1)
        stages.append(Stage([_HEAD], modules, loose))
    return stages


def _stage_index(stages: list[Stage], stage: str, what: str) -> int:
    for i, s in enumerate(stages):
        if stage in s.names and s.name != _HEAD:
            return i
    valid = ", ".join(s.name if len(s.names) == 1 else f"{s.name} (or {'/'.join(s.names[1:])})" for s in stages[:-1])
    raise UsageError(f"unknown stage {stage!r} in {what}; the stages of this model are: {valid}")


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _set(model: nn.Module, stages: Iterable[Stage], mode: str) -> None:
    modules = [m for s in stages for m in s.modules]
    loose = [n for s in stages for n in s.loose]
    # timm builds the replacement (Frozen)BatchNorm with a bare constructor: build it on the model's device, so that
    # meta and CUDA models work and no buffer is left behind on the CPU
    with torch.device(_model_device(model)):
        if modules:
            (timm.utils.freeze if mode == "freeze" else timm.utils.unfreeze)(model, modules)
    params = dict(model.named_parameters())
    for n in loose:
        params[n].requires_grad_(mode != "freeze")


def _frozen_prefix(model: nn.Module, strategy: FreezeStrategy) -> tuple[list[Stage], int]:
    """The model's stages and how many of them (from the first) ``strategy`` freezes; no stages for ``none``."""
    if strategy.kind == "none":
        return [], 0
    stages = model_stages(model)
    if strategy.kind == _HEAD:
        if stages[-1].name != _HEAD:
            raise UsageError(f"model {type(model).__name__} has no head group (its group_matcher matches everything)")
        return stages, len(stages) - 1
    return stages, _stage_index(stages, strategy.stage, f"freeze strategy {str(strategy)!r}") + 1


def apply_freeze(model: nn.Module, strategy: str | FreezeStrategy) -> nn.Module:
    """Freeze ``model`` in place by ``strategy`` (text or the recipe's parsed value) and return it (the same object).

    - ``none``: nothing changes.
    - ``head``: only the head trains (what the group matcher leaves unmatched: ``fc``, FlexibleCNN's ``head.*``).
    - ``until:<stage>``: every stage up to and including ``<stage>`` is frozen (``until:layer3`` on a resnet leaves
      ``layer4`` and ``fc`` training).

    Frozen BatchNorm layers become ``FrozenBatchNorm2d`` (running statistics fixed even under ``model.train()``).
    Call it before ``accelerator.prepare`` and build the optimizer afterwards, from :func:`trainable_parameters`.
    It only ever freezes (calling it again is harmless); :func:`unfreeze` undoes a stage. An unknown strategy or
    stage raises :class:`UsageError` listing this model's stages; the model is then left untouched.
    """
    stages, frozen = _frozen_prefix(model, _parse_strategy(strategy))
    if frozen:
        _set(model, stages[:frozen], "freeze")
    return model


def check_schedule(model: nn.Module, strategy: str | FreezeStrategy, schedule: Sequence[tuple[int, str]]) -> None:
    """Resolve a freeze strategy and an unfreeze schedule (``[(epoch, stage), ...]``, e.g. ``[(3, "layer3")]``) against
    ``model`` without changing it, so a recipe's mistakes surface before training starts. Works on a model built
    on the meta device.

    Raises :class:`UsageError` (naming this model's stages) for a malformed strategy, an unknown stage in the
    strategy or the schedule, a scheduled stage the strategy does not freeze (unfreezing it would do nothing), and a
    stage scheduled twice (also under another of its names, e.g. ``stem`` and ``stages.0``).
    """
    parsed = _parse_strategy(strategy)
    stages, frozen = _frozen_prefix(model, parsed)
    scheduled: dict[int, str] = {}
    for epoch, stage in schedule:
        where = f"model.unfreeze at epoch {epoch}"
        if frozen == 0:
            raise UsageError(f"{where}: model.freeze is none, so there is nothing to unfreeze")
        index = _stage_index(stages, stage, where)
        if index >= frozen:
            raise UsageError(
                f"{where}: stage {stage!r} is not frozen by model.freeze {str(parsed)!r} (it freezes "
                f"{', '.join(s.name for s in stages[:frozen])}), so unfreezing it would do nothing"
            )
        if index in scheduled:
            raise UsageError(f"{where}: stage {stage!r} is already unfrozen {scheduled[index]}")
        scheduled[index] = f"at epoch {epoch}"


def unfreeze(model: nn.Module, stage: str) -> list[nn.Parameter]:
    """Make ``stage`` trainable again (for the recipe's ``unfreeze`` schedule); returns the newly trainable parameters.
    An unknown stage raises :class:`UsageError` listing this model's stages.

    Its ``FrozenBatchNorm2d`` layers turn back into ``BatchNorm2d`` with the frozen statistics (momentum resets to
    PyTorch's 0.1 default, as in :func:`timm.utils.unfreeze`). Those BN weights are NEW parameter objects: add the
    returned list to the optimizer (``optimizer.add_param_group``). Under DDP the wrapper does not know parameters
    that were frozen when it was built: unwrap, unfreeze and prepare the model again.
    """
    stages = model_stages(model)
    index = _stage_index(stages, stage, "unfreeze")
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    _set(model, [stages[index]], "unfreeze")
    return [p for n, p in model.named_parameters() if p.requires_grad and n not in before]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get (``requires_grad``, in ``model.parameters()`` order): frozen ones stay
    out of it."""
    return [p for p in model.parameters() if p.requires_grad]
