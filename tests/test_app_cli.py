"""`inat-zoo app` without gradio (the core environment, Pillow 13): one line naming the extra, before any model loads.
The app itself is tested in tests/test_app.py (the extras environment)."""

from __future__ import annotations

import sys

from inat_zoo.cli import main


def test_app_without_gradio_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError, as when it is not installed
    assert main(["app", str(tmp_path / "no_such_run")]) == 2  # the extra is named before the MODEL is looked at
    out, err = capsys.readouterr()
    assert out == "" and err == "inat-zoo: error: the app needs gradio: pip install 'inat-zoo[app]'\n"


def test_app_and_export_are_commands():
    from inat_zoo.cli import COMMANDS

    assert COMMANDS["app"][0] == "inat_zoo.app" and COMMANDS["export"][0] == "inat_zoo.onnx_export"
