"""The assignment's closed-form counts against the instantiated timm model and the CLI."""

import json
from fractions import Fraction

import pytest
import timm

from inat_zoo import complexity
from inat_zoo.cli import main


def formula_params(m, k, n, h, w):
    # the assignment's formula, written exactly as stated (m*HW/1024 is an integer for H, W divisible by 32)
    return m * (3 * k**2 + 1) + 4 * m * (m * k**2 + 1) + n * (Fraction(m * h * w, 1024) + 1) + 10 * (n + 1)


def formula_macs(m, k, n, h, w):
    return h * w * m * k**2 * (3 + Fraction(85 * m, 256)) + Fraction(m * h * w * n, 1024) + 10 * n


@pytest.mark.parametrize("m, k, n, size", [(32, 3, 256, 224), (16, 5, 64, 64), (8, 7, 100, 96), (4, 1, 10, 32)])
def test_closed_form_equals_model(m, k, n, size):
    model = timm.create_model(
        "inat_flexible_cnn",
        filters=m,
        filter_org="same",
        kernel_size=k,
        dense_size=n,
        batch_norm=False,
        global_pool="flatten",
        img_size=size,
    )
    params = sum(p.numel() for p in model.parameters())
    assert params == formula_params(m, k, n, size, size)
    result = complexity.count(m, k, n, size)
    assert result.params == params == result.params_measured
    assert result.macs == formula_macs(m, k, n, size, size) == result.macs_measured


def test_rectangular_input():
    result = complexity.count(8, 3, 32, (64, 128))
    assert result.params == result.params_measured == formula_params(8, 3, 32, 64, 128)
    assert result.macs == result.macs_measured == formula_macs(8, 3, 32, 64, 128)


def test_cli_json(capsys):
    assert (
        main(["complexity", "--filters", "16", "--kernel-size", "5", "--dense", "64", "--image-size", "64", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"params", "macs", "params_measured", "macs_measured"}
    assert out["params"] == out["params_measured"] == formula_params(16, 5, 64, 64, 64)
    assert out["macs"] == out["macs_measured"] == formula_macs(16, 5, 64, 64, 64)


def test_cli_table(capsys):
    assert main(["complexity", "-m", "8", "-k", "3", "-n", "16", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "MACs" in out and f"{int(formula_params(8, 3, 16, 64, 64)):,}" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--image-size", "100"], "divisible by 32"),
        (["--kernel-size", "4"], "odd"),
        (["--filters", "0"], "--filters must be a positive integer"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, fragment):
    assert main(["complexity", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: ") and fragment in err
    assert "Traceback" not in err and err.count("\n") == 1
