"""Files shipped beside the code: the recipes and the model-card template.

In a clone (and an editable install) they live at the repository root (``recipes/``, ``model_cards/``); a wheel
carries them inside the package (``inat_zoo/recipes/``, ``inat_zoo/model_cards/``, see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_path(relative: str) -> Path:
    """Path of a shipped file, e.g. ``bundled_path("recipes/demo.yaml")``, wherever the package is installed."""
    for base in (_PACKAGE_DIR, _PACKAGE_DIR.parent):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return _PACKAGE_DIR.parent / relative
