"""The inat_* architectures. Importing this package registers them with timm."""

from .flexible_cnn import FlexibleCNN  # noqa: F401

__all__ = ["FlexibleCNN"]
