"""`inat-zoo app` without gradio (the core environment, Pillow 13): one line naming the extra, before any model loads.
The app itself is tested in tests/test_app.py (the extras environment)."""

from __future__ import annotations

import socket
import sys

import pytest

from inat_zoo.cli import main


def test_app_without_gradio_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError, as when it is not installed
    assert main(["app", str(tmp_path / "no_such_run")]) == 2  # the extra is named before the MODEL is looked at
    out, err = capsys.readouterr()
    assert out == "" and err == "inat-zoo: error: the app needs gradio: pip install 'inat-zoo[app]'\n"


def test_app_and_export_are_commands():
    from inat_zoo.cli import COMMANDS

    assert COMMANDS["app"][0] == "inat_zoo.app" and COMMANDS["export"][0] == "inat_zoo.onnx_export"


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("inat-zoo: error: "), err
    return err.removeprefix("inat-zoo: error: ").strip()


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_app_port_outside_1_to_65535_is_one_line_before_gradio_and_the_model(port, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # the check comes first: no gradio needed, no model looked at
    assert main(["app", str(tmp_path / "no_such_run"), "--port", port]) == 2
    assert _one_error_line(capsys) == f"--port {port} is not a port: choose one in 1..65535"


def test_app_host_that_does_not_resolve_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app", str(tmp_path / "no_such_run"), "--host", "999.1.1.1"]) == 2
    assert _one_error_line(capsys).startswith("--host 999.1.1.1 does not resolve")


def test_app_port_in_use_names_port_not_gradio_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", str(tmp_path / "no_such_run"), "--port", str(port)]) == 2
    assert _one_error_line(capsys) == f"port {port} on 127.0.0.1 is in use: choose another --port"
