"""inat_zoo: an iNaturalist 12K model zoo for timm.

Importing the package registers its ``inat_*`` architectures with timm (timm has no plugin discovery), so
``import inat_zoo`` must run before ``timm.create_model("inat_...")`` or loading an ``hf-hub:`` repo that names one.
"""

from . import models  # noqa: F401  (registers the inat_* architectures with timm)

__version__ = "0.1.0"
