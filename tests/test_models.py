"""FlexibleCNN against the checks timm 1.0.31's own tests/test_models.py applies to every timm model.

Each test below mirrors one of timm's (forward, backward, default cfgs, features, torchscript, fx) on every
registered ``inat_*`` architecture, at small input sizes to stay fast on a CPU.
"""

import fnmatch

import pytest
import timm
import torch
from timm.models._manipulate import group_parameters

import inat_zoo  # noqa: F401
from inat_zoo.models.flexible_cnn import FlexibleCNN

MODEL_NAMES = timm.list_models("inat_*")
SMALL = 64  # input size used where the model allows a choice


def _input_size(model) -> tuple[int, int, int]:
    cfg = model.pretrained_cfg
    if cfg.get("fixed_input_size"):
        return tuple(cfg["input_size"])
    return (cfg["input_size"][0], SMALL, SMALL)


def test_registered_names():
    assert "inat_flexible_cnn" in MODEL_NAMES
    assert all(name.startswith("inat_") for name in MODEL_NAMES)
    # every architecture has a default cfg, and no hub id is claimed for weights that do not exist
    for name in MODEL_NAMES:
        tags = timm.list_models(name, include_tags=True)
        assert tags == [f"{name}.untrained"], tags
        assert not timm.models.get_pretrained_cfg(tags[0]).hf_hub_id
    assert timm.list_pretrained("inat_*") == []


def test_default_architecture_is_the_seed_best_sweep():
    model = timm.create_model("inat_flexible_cnn")
    assert [stage.conv.out_channels for stage in model.stages] == [32] * 5
    assert all(stage.conv.kernel_size == (3, 3) for stage in model.stages)
    assert all(isinstance(stage.act, torch.nn.ReLU) for stage in model.stages)
    assert all(isinstance(stage.bn, torch.nn.BatchNorm2d) for stage in model.stages)
    assert model.head.pre_logits.fc.out_features == 256
    assert model.head.drop.p == pytest.approx(0.3)
    assert model.num_classes == 10


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_forward(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    x = torch.randn(1, *_input_size(model))
    out = model(x)
    assert out.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    model.set_grad_checkpointing()
    assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_backward(model_name):
    model = timm.create_model(model_name, pretrained=False, num_classes=42).train()
    out = model(torch.randn(2, *_input_size(model)))
    out.mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
    assert out.shape[-1] == 42


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_default_cfgs(model_name):
    """timm's test_model_default_cfgs and its API-contract helpers, on the meta device as timm runs them."""
    device = "meta"
    with pytest.raises(TypeError):
        timm.create_model(model_name, pretrained=False, device=device, not_a_model_arg=1)
    model = timm.create_model(model_name, pretrained=False, device=device, dtype=torch.float32).eval()
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names)

    cfg = model.pretrained_cfg
    assert model.in_chans == cfg["input_size"][0]
    x = torch.randn(1, *cfg["input_size"], device=device)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
    assert feats.shape[1] == model.num_features
    assert pre.shape[1] == model.head_hidden_size
    state_dict = model.state_dict()
    assert cfg["classifier"] + ".weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict

    model.reset_classifier(0)
    assert model.num_classes == 0
    assert model(x).shape == pre.shape
    model.reset_classifier(0, "")
    out = model(x)
    assert out.ndim == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"])

    model = timm.create_model(model_name, pretrained=False, num_classes=0, device=device).eval()
    assert model(x).shape == pre.shape
    model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="", device=device).eval()
    out = model(x)
    assert out.ndim == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"])

    # reset_classifier keeps the model's device and dtype and training flags
    model = timm.create_model(model_name, pretrained=False, device=device)
    model.to(dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in model.get_classifier().parameters())

    # frozen parameters stay frozen through reset_classifier(0) and (0, '')
    model = timm.create_model(model_name, pretrained=False, device=device)
    model.requires_grad_(False)
    model.reset_classifier(0)
    model.reset_classifier(0, "")
    assert not [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_dtype_change_after_forward(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    x = torch.randn(1, *_input_size(model))
    model(x)
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_forward_features(model_name):
    model = timm.create_model(model_name, pretrained=False, features_only=True).eval()
    size = _input_size(model) if model.pretrained_cfg.get("fixed_input_size") else (3, 96, 96)
    outputs = model(torch.randn(1, *size))
    assert len(outputs) == 5
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    for out, chs, red in zip(outputs, model.feature_info.channels(), model.feature_info.reduction(), strict=True):
        assert out.shape[1] == chs
        assert out.shape[-1] == size[-1] // red


def test_forward_intermediates_match_features_only():
    model = timm.create_model("inat_flexible_cnn_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 5 and torch.equal(final, model.forward_features(x))
    assert torch.equal(inter[2], model.stages[:3](x))


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_forward_torchscript(model_name):
    with timm.set_scriptable(True):
        model = timm.create_model(model_name, pretrained=False).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, *_input_size(model))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_model_forward_and_backward_fx(model_name):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = timm.create_model(model_name, pretrained=False).train()
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = torch.randn(2, *_input_size(model))
    out = next(iter(fx_model(x).values()))
    out.mean().backward()
    assert out.shape == (2, model.num_classes)
    assert all(p.grad is not None for p in fx_model.parameters())


def test_torch_compile_fullgraph():
    # backend "eager" checks that dynamo captures the whole model in one graph, without a slow inductor build
    model = timm.create_model("inat_flexible_cnn_tiny").eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_data_config_and_transform():
    model = timm.create_model("inat_flexible_cnn", img_size=96)
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 96, 96)
    transform = timm.data.create_transform(**cfg, is_training=False)
    from PIL import Image

    assert transform(Image.new("RGB", (150, 120))).shape == (3, 96, 96)


def test_group_matcher_drives_layer_decay():
    import timm.optim

    model = timm.create_model("inat_flexible_cnn_tiny")
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.5)
    scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
    assert len(scales) >= 6  # stem, 4 blocks, head each get their own scale
    assert scales[-1] == 1.0 and scales[0] < scales[-1]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(filters=[8, 8, 8, 8, 8, 8]), "list of 5"),
        (dict(act_layer="swishy"), "timm activations are"),
        (dict(global_pool="flatten", img_size=100), "divisible by 32"),
        (dict(filter_org="triple"), "same, double, half"),
        (dict(kernel_size=4), "odd"),
        (dict(global_pool="mean"), "avg, max, flatten"),
    ],
)
def test_invalid_arguments_say_what_is_allowed(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        timm.create_model("inat_flexible_cnn", **kwargs)


@pytest.mark.parametrize(
    "filters, org, expected",
    [
        (16, "same", [16] * 5),
        (16, "double", [16, 32, 64, 128, 256]),
        (64, "half", [64, 32, 16, 8, 4]),
        ([4, 8, 8, 16, 16], "same", [4, 8, 8, 16, 16]),
    ],
)
def test_filter_organisation(filters, org, expected):
    model = timm.create_model("inat_flexible_cnn", filters=filters, filter_org=org)
    assert [stage.conv.out_channels for stage in model.stages] == expected
    assert model.feature_info[-1]["num_chs"] == expected[-1]


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "mish", "leaky_relu", "elu"])
def test_activations(act):
    model = timm.create_model("inat_flexible_cnn_tiny", act_layer=act)
    expected = type(timm.layers.get_act_layer(act)())
    assert isinstance(model.stages[0].act, expected)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_options_shape_the_network():
    model = timm.create_model(
        "inat_flexible_cnn",
        filters=8,
        kernel_size=[3, 3, 5, 5, 7],
        batch_norm=False,
        conv_drop_rate=0.1,
        global_pool="max",
        dense_size=32,
        in_chans=1,
        num_classes=4,
    )
    assert isinstance(model.stages[0].bn, torch.nn.Identity)
    assert model.stages[4].conv.kernel_size == (7, 7)
    assert isinstance(model.stages[0].drop, torch.nn.Dropout2d)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    assert model.head.pre_logits.fc.out_features == 32


def test_model_args_round_trip_through_save_for_hf(tmp_path):
    model = timm.create_model("inat_flexible_cnn", filters=8, act_layer="mish", img_size=64, num_classes=3).eval()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert isinstance(loaded, FlexibleCNN)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), model(x))
    assert timm.data.resolve_model_data_config(loaded)["input_size"] == (3, 64, 64)
