"""The `inat-zoo` dispatcher: listing, help, errors as one line with exit 2, --debug tracebacks."""

import json
import subprocess
import sys

import pytest

from inat_zoo.cli import COMMANDS, main


def test_every_command_module_has_the_cli_contract():
    import importlib

    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.configure_parser) and callable(module.run_cli), name


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in rows]
    assert "inat_flexible_cnn" in names and all(n.startswith("inat_") for n in names)
    default = next(row for row in rows if row["name"] == "inat_flexible_cnn")
    assert default["params"] == 49_066 and default["input_size"] == [3, 224, 224]


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "inat-zoo: error:" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    from inat_zoo.errors import UsageError

    with pytest.raises(UsageError):
        main(["complexity", "--kernel-size", "4", "--debug"])


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "inat_zoo.cli", "complexity", "--no-measure", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["params_measured"] is None
