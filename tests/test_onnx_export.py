"""`inat-zoo export --format onnx`: a trained run as an ONNX file that onnxruntime runs like PyTorch (dynamic batch,
preprocessing and labels in metadata_props); a bad opset or a mismatch is one line, exit 2, and no file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inat_zoo import onnx_export
from inat_zoo.cli import main
from inat_zoo.evaluation import EvalImages
from inat_zoo.loading import load_model

from .eval_helpers import class_names, image_files, make_run

pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra: pip install 'inat-zoo[onnx]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), sample_root, filters=8)


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_a_run_runs_in_onnxruntime_like_pytorch(run, sample_root, tmp_path, capsys):
    out = tmp_path / "exported" / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    expected_exporter = "dynamo" if importlib.util.find_spec("onnxscript") else "TorchScript"
    assert f"exporter: torch.onnx {expected_exporter} exporter" in printed.splitlines()[0]
    assert "max abs logit difference" in printed and f"wrote {out}" in printed

    session = _session(out)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("pixel_values", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]  # dynamic batch, the model's input size
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_size"]) == [3, 64, 64]
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert json.loads(meta["label_names"]) == class_names(sample_root)

    # three real test images through the model's own preprocessing: onnxruntime == PyTorch within 1e-4
    loaded = load_model(str(run))
    images = EvalImages([str(f) for f, _ in image_files(sample_root, "val")[::7][:3]], loaded.data_config)
    x = torch.stack([images.pixels(i) for i in range(3)])
    with torch.no_grad():
        expected = loaded.model(x).numpy()
    (got,) = session.run(["logits"], {"pixel_values": x.numpy()})
    assert got.shape == (3, len(class_names(sample_root)))
    assert np.abs(got - expected).max() <= 1e-4
    (one,) = session.run(["logits"], {"pixel_values": x[:1].numpy()})  # another batch size: the axis is dynamic
    assert np.abs(one - expected[:1]).max() <= 1e-4
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    from inat_zoo.atomic import current_umask

    return current_umask()


@pytest.mark.parametrize("opset", ["99", "12", "0"])
def test_a_bad_opset_is_one_line_exit_2_and_no_file(run, tmp_path, capsys, opset):
    out = tmp_path / "model.onnx"
    argv = ["export", str(run), "--out", str(out), "--opset", opset]
    if opset == "12" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("opset 12 is valid for the TorchScript exporter, the one used without onnxscript")
    assert main(argv) == 2
    out_text, err = capsys.readouterr()
    assert out_text == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"inat-zoo: error: --opset {opset} does not fit")
    assert list(tmp_path.iterdir()) == []  # nothing at --out, no temporary file beside it


def test_the_torchscript_exporter_writes_older_opsets(run, tmp_path, capsys):
    out = tmp_path / "model13.onnx"
    argv = ["export", f"local-dir:{run}/model", "--out", str(out), "--opset", "13", "--exporter", "torchscript"]
    assert main(argv) == 0
    assert "TorchScript exporter (dynamo=False), opset 13" in capsys.readouterr().out
    import onnx

    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert {p.key for p in model.metadata_props} >= {"input_size", "mean", "std", "label_names"}


def test_a_mismatch_above_tolerance_is_an_error_and_writes_nothing(run, tmp_path, capsys):
    """--atol below what float32 reorderings give: the same path a wrong export takes (e.g. a model left in train
    mode), without breaking the model. (The TorchScript exporter: quicker, and the check is the same.)"""
    out = tmp_path / "model.onnx"
    argv = ["export", str(run), "--out", str(out), "--atol", "1e-12", "--exporter", "torchscript", "--opset", "17"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: the ONNX export of ") and "differs from PyTorch by" in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_user_mistakes_and_missing_extra_are_one_line(run, tmp_path, capsys, monkeypatch):
    cases = {
        "folder": (["export", str(run), "--out", str(tmp_path)], "is a folder"),
        "suffix": (["export", str(run), "--out", str(tmp_path / "m.txt")], "must end in .onnx"),
        "model": (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")], "no such run directory"),
    }
    for what, (argv, message) in cases.items():
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (what, err)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", _without("onnxruntime", real_find_spec))
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err == "inat-zoo: error: ONNX export needs onnxruntime: pip install 'inat-zoo[onnx]'\n"
    assert list(tmp_path.iterdir()) == []


def test_a_bare_timm_name_without_weights_is_one_line_before_the_exporter_line(tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["export", "inat_flexible_cnn_tiny", "--out", str(out)]) == 2
    printed, err = capsys.readouterr()
    assert printed == "" and err.count("\n") == 1  # no "exporter: ..." line for an export that never starts
    assert "timm has no pretrained weights for inat_flexible_cnn_tiny" in err and "pretrained=False" not in err
    assert "use a run directory, local-dir:PATH or hf-hub:ORG/NAME" in err and not out.exists()


def test_out_in_missing_folders_is_made_but_not_under_a_file(run, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "sub" / "model.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"inat-zoo: error: --out {out}: {tmp_path / 'afile'} is a file, not a folder\n"
    out = tmp_path / "nodir" / "deeper" / "model.onnx"  # missing folders are made (atomic write), as predict --csv
    assert main(["export", str(run), "--out", str(out), "--exporter", "torchscript", "--opset", "17"]) == 0
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


def _without(missing: str, find_spec):
    return lambda name, *args: None if name == missing else find_spec(name, *args)


def test_hub_models_export_too(run, tmp_path, monkeypatch):
    """An hf-hub: MODEL, read from an offline Hub cache laid out as a download leaves it."""
    import huggingface_hub.constants

    from .test_hub import _offline_hub_cache

    _offline_hub_cache(tmp_path / "cache", "someone/tiny", run / "model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    result = onnx_export.export_onnx("hf-hub:someone/tiny", tmp_path / "hub.onnx", exporter="torchscript", opset=17)
    assert result.max_abs_diff <= 1e-4 and result.metadata["model"] == "hf-hub:someone/tiny"
    assert json.loads(result.metadata["label_names"]) == load_model(str(run)).label_names
