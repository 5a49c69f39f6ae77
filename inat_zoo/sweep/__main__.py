"""``python -m inat_zoo.sweep SWEEP.yaml ...``: the same as ``inat-zoo sweep SWEEP.yaml ...`` (as for the trainer)."""

import sys

from ..cli import main

sys.exit(main(["sweep", *sys.argv[1:]]))
