"""FlexibleCNN: the configurable five-block CNN of the iNaturalist 12K assignment, as a timm model.

Five blocks of conv -> (batch norm) -> activation -> 2x2 max-pool, then a head: global pool (or the assignment's
flatten) -> Linear(dense) -> activation -> dropout -> Linear(num_classes). Filters, kernel sizes, activation, batch
norm, dropout and dense width are constructor arguments, so a hyperparameter sweep is just a set of
``timm.create_model("inat_flexible_cnn", **args)`` calls.

The file follows timm's model-file layout (block, model class, ``_create``, ``_cfg``, ``default_cfgs``, registered
entry points) and the full timm model contract: features_only, group_matcher, grad checkpointing, reset_classifier,
forward_intermediates, torchscript and torch.fx.
"""

# no `from __future__ import annotations`: torch.fx + torchscript need real annotations on forward()
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SelectAdaptivePool2d, get_act_layer
from timm.layers.create_act import _ACT_LAYER_DEFAULT
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = ["FlexibleCNN"]

NUM_BLOCKS = 5
FILTER_ORGS = ("same", "double", "half")
POOL_TYPES = ("avg", "max", "flatten", "")


def _as_five(value: int | Sequence[int], name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * NUM_BLOCKS
    values = list(value)
    if len(values) != NUM_BLOCKS or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or a list of {NUM_BLOCKS} ints, got {value!r}")
    return values


def resolve_filters(filters: int | Sequence[int], filter_org: str = "same") -> list[int]:
    """Filter count of each block: an explicit list, or one int organised as same / double / half per block."""
    if filter_org not in FILTER_ORGS:
        raise ValueError(f"filter_org must be one of {', '.join(FILTER_ORGS)}, got {filter_org!r}")
    if not isinstance(filters, int):
        if filter_org != "same":
            raise ValueError("filter_org only applies to a single int filters; give 5 counts or filter_org='same'")
        counts = _as_five(filters, "filters")
    elif filter_org == "double":
        counts = [filters * 2**i for i in range(NUM_BLOCKS)]
    elif filter_org == "half":
        counts = [max(1, filters // 2**i) for i in range(NUM_BLOCKS)]
    else:
        counts = [filters] * NUM_BLOCKS
    if any(c < 1 for c in counts):
        raise ValueError(f"filter counts must be positive, got {counts}")
    return counts


def resolve_act_layer(act_layer: str | type[nn.Module]) -> type[nn.Module]:
    """The activation class for a timm activation name (a class passes through); ValueError for an unknown name."""
    if not isinstance(act_layer, str):
        return act_layer
    if act_layer not in _ACT_LAYER_DEFAULT:
        allowed = ", ".join(sorted(_ACT_LAYER_DEFAULT))
        raise ValueError(f"unknown act_layer {act_layer!r}; timm activations are: {allowed}")
    return get_act_layer(act_layer)


def _resolve_kernels(kernel_size: int | Sequence[int]) -> list[int]:
    """Kernel size of each block; raises ValueError unless each is an odd positive int."""
    kernels = _as_five(kernel_size, "kernel_size")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"kernel sizes must be odd positive ints (3, 5, 7, ...), got {kernels}")
    return kernels


def _head_feat_size(global_pool: str, img_size: int | Sequence[int], dense_size: int) -> tuple[int, int]:
    """The head's input feature-map size (H, W) in cells: ``img_size`` over the 5 poolings' reduction of 32.

    Raises ValueError for an unknown ``global_pool``, a ``flatten`` head whose ``img_size`` is not divisible by 32,
    and a non-positive ``dense_size``.
    """
    if global_pool not in POOL_TYPES:
        raise ValueError(f"global_pool must be one of avg, max, flatten, '' (none), got {global_pool!r}")
    img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    reduction = 2**NUM_BLOCKS
    if global_pool == "flatten" and (len(img_hw) != 2 or any(s < reduction or s % reduction for s in img_hw)):
        raise ValueError(
            f"global_pool='flatten' needs img_size divisible by {reduction} (5 poolings), e.g. 224 or 256;"
            f" got {img_size!r}"
        )
    if dense_size < 1:
        raise ValueError(f"dense_size must be a positive int, got {dense_size}")
    return img_hw[0] // reduction, img_hw[1] // reduction


class ConvBlock(nn.Module):
    """conv -> (batch norm) -> activation -> 2x2 max-pool (-> channel dropout)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        act_layer: type[nn.Module],
        batch_norm: bool = True,
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        # "same" padding keeps the spatial size, so only the pools shrink it (the assignment's arithmetic).
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=not batch_norm, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd) if batch_norm else nn.Identity()
        self.act = act_layer()
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chs, H, W)`` float -> ``(N, out_chs, H // 2, W // 2)`` float (same-padded conv, then 2x2 pool)."""
        return self.drop(self.pool(self.act(self.bn(self.conv(x)))))


class FlexibleHead(nn.Module):
    """pool or flatten -> Linear(dense) -> activation -> dropout -> Linear(num_classes).

    ``pool_type`` is ``avg``/``max`` (global pooling), ``flatten`` (the assignment's head: every feature-map cell
    feeds the dense layer, so the input size is fixed) or ``''`` (no pooling: dense and classifier become 1x1 convs
    and the output keeps its spatial size, as timm expects of ``reset_classifier(0, '')``).
    """

    def __init__(
        self,
        in_chs: int,
        feat_size: tuple[int, int],
        num_classes: int,
        hidden_size: int,
        pool_type: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_chs = in_chs
        self.feat_size = feat_size
        self.hidden_size = hidden_size
        self.pool_type = pool_type
        self.global_pool = self._make_pool(pool_type)
        linear = self._linear_layer()
        self.pre_logits = nn.Sequential(
            OrderedDict([("fc", linear(self._in_features(), hidden_size, **dd)), ("act", act_layer())])
        )
        self.drop = nn.Dropout(drop_rate)
        self.fc = linear(hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _make_pool(pool_type: str) -> nn.Module:
        if pool_type == "flatten":
            return nn.Flatten(1)
        return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))

    def _linear_layer(self):
        return partial(nn.Conv2d, kernel_size=1) if self.pool_type == "" else nn.Linear

    def _in_features(self) -> int:
        if self.pool_type == "flatten":
            return self.in_chs * self.feat_size[0] * self.feat_size[1]
        return self.in_chs

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        """Replace the classifier with ``num_classes`` outputs (0: none) and, if given, switch the pooling.

        Switching between ``avg``/``max`` and ``''`` keeps the dense layer's weights (Linear <-> 1x1 conv); a switch
        to or from ``flatten`` changes its input width, so the dense layer is re-initialised. New layers take the
        device, dtype, train/eval mode and ``requires_grad`` of the ones they replace.
        """
        ref = self.pre_logits.fc.weight
        dd = {"device": ref.device, "dtype": ref.dtype}
        if pool_type is not None and pool_type != self.pool_type:
            old_fc, old_in = self.pre_logits.fc, self._in_features()
            self.pool_type = pool_type
            self.global_pool = self._make_pool(pool_type).train(self.training)
            new_fc = self._linear_layer()(self._in_features(), self.hidden_size, **dd)
            with torch.no_grad():
                if self._in_features() == old_in and ref.device.type != "meta":
                    # avg/max <-> '' keep their weights (Linear <-> 1x1 conv); flatten changes the input width
                    new_fc.weight.copy_(old_fc.weight.reshape(new_fc.weight.shape))
                    new_fc.bias.copy_(old_fc.bias)
            new_fc.weight.requires_grad_(old_fc.weight.requires_grad)
            new_fc.bias.requires_grad_(old_fc.bias.requires_grad)
            self.pre_logits.fc = new_fc.train(self.pre_logits.training)
        linear = self._linear_layer()
        self.fc = linear(self.hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(N, in_chs, h, w)`` float features -> ``(N, num_classes)`` float logits.

        With ``pre_logits`` the dense layer's activations ``(N, hidden_size)`` (after dropout) instead; with
        ``pool_type=''`` both keep the spatial size, ``(N, C, h, w)``.
        """
        x = self.global_pool(x)
        x = self.pre_logits(x)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _make_stages(
    in_chans: int,
    chs: list[int],
    kernels: list[int],
    act: type[nn.Module],
    batch_norm: bool,
    conv_drop_rate: float,
    dd: dict[str, Any],
) -> tuple[nn.Sequential, list[dict[str, Any]]]:
    """The five conv blocks (``stages.0`` .. ``stages.4``) and their timm ``feature_info`` (channels, reduction)."""
    stages, feature_info = [], []
    prev_chs = in_chans
    for i, (out_chs, k) in enumerate(zip(chs, kernels, strict=True)):
        stages.append(ConvBlock(prev_chs, out_chs, k, act, batch_norm, conv_drop_rate, **dd))
        prev_chs = out_chs
        feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i + 1), module=f"stages.{i}"))
    return nn.Sequential(*stages), feature_info


class FlexibleCNN(nn.Module):
    """Five conv blocks and an MLP head, every part configurable (see the module docstring)."""

    def __init__(
        self,
        filters: int | Sequence[int] = 32,
        filter_org: str = "same",
        kernel_size: int | Sequence[int] = 3,
        act_layer: str | type[nn.Module] = "relu",
        batch_norm: bool = True,
        dense_size: int = 256,
        drop_rate: float = 0.3,
        conv_drop_rate: float = 0.0,
        global_pool: str = "avg",
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 10,
        device=None,
        dtype=None,
    ):
        """
        Args:
            filters: filters per block, an int (organised by ``filter_org``) or a list of 5.
            filter_org: ``same``, ``double`` (x2 per block) or ``half`` (/2 per block) for an int ``filters``.
            kernel_size: odd kernel size, an int or a list of 5.
            act_layer: timm activation name (relu, gelu, silu, mish, leaky_relu, elu, ...).
            batch_norm: batch norm after each conv.
            dense_size: width of the dense layer in the head.
            drop_rate: dropout before the classifier.
            conv_drop_rate: channel dropout after each block.
            global_pool: ``avg``, ``max``, or ``flatten`` (the assignment's head; needs ``img_size``).
            img_size: input size, used by the ``flatten`` head (must be divisible by 32).
            in_chans: input channels.
            num_classes: classifier outputs (0 removes the classifier).

        Input ``(B, in_chans, H, W)`` float images; output ``(B, num_classes)`` float logits
        (``(B, num_classes, H/32, W/32)`` with ``global_pool=''``). Raises ValueError for an invalid argument (the
        message names it and what it takes).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        chs = resolve_filters(filters, filter_org)
        kernels = _resolve_kernels(kernel_size)
        act = resolve_act_layer(act_layer)
        feat_size = _head_feat_size(global_pool, img_size, dense_size)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stages, self.feature_info = _make_stages(in_chans, chs, kernels, act, batch_norm, conv_drop_rate, dd)
        self.num_features = chs[-1]
        self.head_hidden_size = dense_size
        self.head = FlexibleHead(chs[-1], feat_size, num_classes, dense_size, global_pool, act, drop_rate, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter-group regexes: ``stem`` (block 0) and ``blocks`` (``stages.N``; ``coarse`` is ignored)."""
        # block 0 is the stem; each later block is one group (used by freezing and layer-wise LR decay)
        return dict(stem=r"^stages\.0\.", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the conv blocks in the backward pass (timm ``checkpoint_seq``) to save activation memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory should exempt from weight decay: none."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final layer, ``head.fc``: Linear(dense_size, num_classes), a 1x1 conv, or Identity if none."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm contract: a new ``num_classes``-way classifier (0 removes it) and optionally a new pooling.

        ``global_pool=''`` makes ``forward`` return ``(N, num_classes, H/32, W/32)`` maps. Raises ValueError for an
        unknown ``global_pool``.
        """
        if global_pool is not None and global_pool not in POOL_TYPES:
            raise ValueError(f"global_pool must be one of avg, max, flatten, '' (none), got {global_pool!r}")
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Features of the selected blocks (all when ``indices`` is None; an int takes the last n).

        ``x`` is ``(N, in_chans, H, W)`` float; block ``i`` gives ``(N, C_i, H / 2**(i+1), W / 2**(i+1))`` float.
        Returns the list of those maps if ``intermediates_only``, else ``(final block output, list)``. ``norm`` and
        ``output_fmt`` exist for timm's signature (there is no final norm; only NCHW is supported).
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks (and head) not needed for the selected intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if max_index < NUM_BLOCKS - 1:
            self.num_features = self.feature_info[max_index]["num_chs"]
            self.head.in_chs = self.num_features
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W)`` float images -> ``(N, num_features, H/32, W/32)`` float maps (the 5 blocks)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_features`` maps -> ``(N, num_classes)`` float logits (``(N, dense_size)`` with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W)`` float, normalised images -> ``(N, num_classes)`` float logits (unnormalised)."""
        return self.forward_head(self.forward_features(x))


def _create_flexible_cnn(variant: str, pretrained: bool = False, **kwargs: Any) -> FlexibleCNN:
    overlay: dict[str, Any] = {}
    img_size = kwargs.get("img_size")
    if img_size is not None:
        # keep the data config (timm.data.resolve_model_data_config) in step with the size the model was built for
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        overlay.update(input_size=(kwargs.get("in_chans", 3), *hw), pool_size=(hw[0] // 32, hw[1] // 32))
    if "global_pool" in kwargs:
        # timm's flag for "this model takes only its input_size" (the trainer builds such a head for its crops)
        overlay["fixed_input_size"] = kwargs["global_pool"] == "flatten"
    if overlay:
        kwargs["pretrained_cfg_overlay"] = {**overlay, **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_model_with_cfg(
        FlexibleCNN,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=tuple(range(NUM_BLOCKS)), flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 10,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


# No weights are published yet: every architecture is `.untrained` (an hf_hub_id only for weights that exist).
default_cfgs = generate_default_cfgs(
    {
        "inat_flexible_cnn.untrained": _cfg(),
        "inat_flexible_cnn_flatten.untrained": _cfg(fixed_input_size=True),
        "inat_flexible_cnn_double.untrained": _cfg(),
        "inat_flexible_cnn_tiny.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
    }
)


def _args(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    # explicit kwargs win over the variant's defaults; unknown ones reach FlexibleCNN and raise TypeError there
    return {**defaults, **kwargs}


@register_model
def inat_flexible_cnn(pretrained: bool = False, **kwargs: Any) -> FlexibleCNN:
    """The seed's best sweep: 32 filters in every block, 3x3, ReLU, batch norm, dense 256, dropout 0.3."""
    defaults = dict(filters=32, filter_org="same", kernel_size=3, act_layer="relu", batch_norm=True, dense_size=256)
    return _create_flexible_cnn("inat_flexible_cnn", pretrained=pretrained, **_args(defaults, kwargs))


@register_model
def inat_flexible_cnn_flatten(pretrained: bool = False, **kwargs: Any) -> FlexibleCNN:
    """The assignment's exact head: the 7x7 feature map is flattened into the dense layer (fixed 224 input)."""
    defaults = dict(filters=32, kernel_size=3, act_layer="relu", dense_size=256, global_pool="flatten", img_size=224)
    return _create_flexible_cnn("inat_flexible_cnn_flatten", pretrained=pretrained, **_args(defaults, kwargs))


@register_model
def inat_flexible_cnn_double(pretrained: bool = False, **kwargs: Any) -> FlexibleCNN:
    """32 filters doubling per block (32..512), 3x3, Mish, batch norm, dense 512: the wider sweep candidate."""
    defaults = dict(filters=32, filter_org="double", kernel_size=3, act_layer="mish", dense_size=512)
    return _create_flexible_cnn("inat_flexible_cnn_double", pretrained=pretrained, **_args(defaults, kwargs))


@register_model
def inat_flexible_cnn_tiny(pretrained: bool = False, **kwargs: Any) -> FlexibleCNN:
    """8 filters doubling per block, dense 64, 64 px input: for demos and tests on a CPU."""
    defaults = dict(filters=8, filter_org="double", kernel_size=3, dense_size=64, drop_rate=0.1)
    return _create_flexible_cnn("inat_flexible_cnn_tiny", pretrained=pretrained, **_args(defaults, kwargs))
