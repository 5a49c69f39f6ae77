"""The data layer: iNaturalist 12K (or any folder in its layout) as Hugging Face datasets, fast transforms.

Import is cheap: heavy libraries (datasets, timm, torch) load only when a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .download import default_root, download_inat12k
    from .imagefolder import check_folder, load_inat12k
    from .loader import create_image_loader
    from .prepare import prepare_dataset
    from .sample import write_sample
    from .transforms import AUGMENT_DEFAULTS, create_image_transform, with_image_transform

_EXPORTS = {
    "default_root": "download",
    "download_inat12k": "download",
    "check_folder": "imagefolder",
    "load_inat12k": "imagefolder",
    "create_image_loader": "loader",
    "prepare_dataset": "prepare",
    "write_sample": "sample",
    "AUGMENT_DEFAULTS": "transforms",
    "create_image_transform": "transforms",
    "with_image_transform": "transforms",
}
__all__ = [
    "AUGMENT_DEFAULTS",
    "check_folder",
    "create_image_loader",
    "create_image_transform",
    "default_root",
    "download_inat12k",
    "load_inat12k",
    "prepare_dataset",
    "with_image_transform",
    "write_sample",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
