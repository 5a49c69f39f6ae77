"""The two places inat_zoo reads a private part of ``datasets``, kept here so an upgrade breaks only this file.

Neither has a public equivalent that is as good (datasets 5.2):

- a split's fingerprint (``Dataset._fingerprint``): the hash ``datasets`` itself keys its cache with, covering the
  source files AND every transform applied since (select, filter, shuffle, ...). Rebuilding it from public inputs
  (``cache_files``, ``features``, length) would miss those transforms, or in-memory splits, and would also change
  the key of every prepared copy already cached;
- imagefolder's image suffixes (``ImageFolder.EXTENSIONS``, in an internal module): the data checks must count as
  images exactly the files ``load_dataset("imagefolder")`` loads; a copied list would drift from the library's.

pyproject.toml caps ``datasets`` below its next major version for these; a new major version is checked here first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

__all__ = ["dataset_fingerprint", "imagefolder_extensions"]


def dataset_fingerprint(split: datasets.Dataset) -> str:
    """The fingerprint ``datasets`` gives ``split`` (a hex string; changes with the data and every transform)."""
    return split._fingerprint


def imagefolder_extensions() -> list[str]:
    """The file suffixes ``datasets``' imagefolder loads as images, spelled as the library spells them."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return list(ImageFolder.EXTENSIONS)
