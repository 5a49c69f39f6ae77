"""The W&B backend: ``wandb.sweep`` + ``wandb.agent``; each agent run reads ``wandb.config`` into a recipe and trains.

W&B sweeps need the W&B server and a login, so offline modes are refused up front instead of hanging. In W&B's
model the server holds the sweep and proposes every run; agents only ask and train. So several GPUs or machines
run one sweep with one agent each: the first command creates the sweep (its id is printed and written to
``DIR/wandb_sweep_id.txt``), and every other joins it with ``--sweep-id ENTITY/PROJECT/ID``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..config import keys_overlap, load_recipe, parse_override
from ..errors import UsageError
from .spec import (
    OPTUNA_DISTRIBUTIONS,
    Sweep,
    announce_pinned,
    check_overrides,
    check_space,
    release_memory,
    search_space,
    to_wandb_config,
    trial_recipe,
)

# Keys the W&B backend sets in every trial's recipe (each agent run logs to W&B), besides those the sweep owns.
_WANDB_OWNED = ("track.wandb", "track.mode", "track.project")


def require_wandb_online() -> None:
    """W&B sweeps need the server and a login; refuse clearly instead of hanging on a prompt or the network."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        raise UsageError(
            f"W&B sweeps need the W&B server, but W&B is {mode or 'disabled'} here (WANDB_MODE/WANDB_DISABLED); "
            "run the same sweep file offline with --backend optuna"
        )
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise UsageError(
            "W&B sweeps need a W&B login: run `wandb login` or set WANDB_API_KEY "
            "(or run the same sweep file offline with --backend optuna)"
        )


def _check_owned_keys(sweep: Sweep, overrides: Sequence[str]) -> None:
    """Refuse overrides and swept parameters of the keys this backend sets in every trial."""
    check_overrides(overrides)
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if any(keys_overlap(key, owned) for owned in _WANDB_OWNED):
            raise UsageError(
                f"override {text!r}: the W&B backend sets {', '.join(_WANDB_OWNED)} in every trial "
                "(it logs each one to W&B online; --project names the project)"
            )
    owned = [p for p in sweep.parameters if any(keys_overlap(p, k) for k in _WANDB_OWNED)]
    if owned:
        raise UsageError(f"parameter {owned[0]!r} cannot be swept: the W&B backend sets {', '.join(_WANDB_OWNED)}")


def _parse_sweep_id(text: str) -> tuple[str, str, str]:
    """``ENTITY/PROJECT/ID`` (as W&B prints it) -> its three parts."""
    parts = text.split("/")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise UsageError(f"--sweep-id must be ENTITY/PROJECT/ID, as W&B prints it for a new sweep; got {text!r}")
    return parts[0], parts[1], parts[2]


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    """A parameter from ``wandb.config``: stored under its dotted name, or nested if W&B nested it."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def run_wandb(
    sweep: Sweep,
    overrides: Sequence[str],
    trials: int | None,
    out: str | os.PathLike,
    *,
    project: str | None = None,
    entity: str | None = None,
    sweep_id: str | None = None,
) -> str:
    """Create the W&B sweep (or join ``sweep_id``) and run an agent here; each run trains in ``out/<run id>``.

    Args:
        trials: how many runs this agent trains (None: until the sweep ends).
        sweep_id: ``ENTITY/PROJECT/ID`` of an existing sweep to join as one more agent, instead of creating one.

    Raises:
        UsageError: a bad override or sweep id, or W&B offline or without a login (before anything is written).
    """
    joined = _parse_sweep_id(sweep_id) if sweep_id is not None else None
    _check_owned_keys(sweep, overrides)
    base = load_recipe(sweep.recipe, overrides)
    config = to_wandb_config(sweep, overrides)
    space = search_space(sweep, overrides)
    announce_pinned(sweep, overrides)
    check_space(sweep, {k: v for k, v in space.items() if v["distribution"] in OPTUNA_DISTRIBUTIONS}, overrides)
    require_wandb_online()
    import wandb

    project = project or sweep.raw.get("project") or base["track"]["project"]
    entity = entity or sweep.raw.get("entity")
    if joined is not None:
        entity, project, sweep_id = joined
    out = Path(out)
    from ..train import train

    def run_trial() -> None:
        with wandb.init(dir=os.fspath(out)) as run:
            params = {key: _config_value(run.config, key) for key in space}
            tracking = dict(zip(_WANDB_OWNED, (True, "online", project), strict=True))
            recipe = trial_recipe(sweep, params, overrides, out / run.id, **tracking)
            train(recipe)
        release_memory()

    out.mkdir(parents=True, exist_ok=True)
    if joined is None:
        sweep_id = wandb.sweep(config, project=project, entity=entity)
        atomic_write_text(out / "wandb_sweep_id.txt", sweep_id + "\n")
        print(
            f"sweep: created W&B sweep {entity or '<default entity>'}/{project}/{sweep_id}; more agents join it "
            f"with --sweep-id"
        )
    wandb.agent(sweep_id, function=run_trial, count=trials, project=project, entity=entity)
    return sweep_id
