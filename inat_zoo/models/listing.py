"""``inat-zoo models``: the registered inat_* architectures, with their default parameter counts."""

from __future__ import annotations

import argparse
import json


def list_inat_models() -> list[dict]:
    """Name, parameter count (built on the meta device, so nothing is allocated) and default input size."""
    import timm

    import inat_zoo  # noqa: F401  (registers the models)

    rows = []
    for name in timm.list_models("inat_*"):
        model = timm.create_model(name, pretrained=False, device="meta")
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in model.parameters()),
                "input_size": list(model.pretrained_cfg["input_size"]),
                "pretrained_tags": timm.list_pretrained(f"{name}.*"),
            }
        )
    return rows


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``inat-zoo models``' options (``--json``) to ``parser``."""
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def run_cli(args: argparse.Namespace) -> int:
    """Print the inat_* timm models (name, parameter count, input size) as a table or JSON; returns 0."""
    rows = list_inat_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':34}{'params':>12}  input")
    for row in rows:
        size = "x".join(str(s) for s in row["input_size"][1:])
        print(f"{row['name']:34}{row['params']:>12,}  {size}")
    print("\nLoad one with timm.create_model(NAME, num_classes=10, ...) after `import inat_zoo`.")
    return 0
