"""Hyperparameter sweeps over recipe keys: W&B sweeps online, the same sweep file offline with Optuna.

A sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters``, ``early_terminate``) whose
parameter names are dotted recipe keys (``model.args.filters``, ``train.lr``), plus ``recipe:`` (our extension)
naming the base recipe. One file serves both backends:

- ``wandb``: ``wandb.sweep`` + ``wandb.agent``; each agent run reads ``wandb.config`` into the recipe and trains.
  W&B sweeps need the W&B server and a login, so offline modes are refused up front instead of hanging.
- ``optuna``: fully offline. TPE (multivariate) for ``bayes``, Hyperband pruning fed with the per-epoch metric,
  and a journal file in the sweep folder so a killed sweep resumes: finished trials count toward ``--trials``,
  and a trial that was running when the process died is run again in its own folder (from its last checkpoint).

Every trial is a real run directory written by :func:`inat_zoo.train.train`.

Layers, imports going one way (each module imports only those below it):

- :mod:`.cli` -- ``inat-zoo sweep``: arguments, then one backend;
- :mod:`.workers` -- ``--workers N``: N worker processes on this machine, one progress bar;
- :mod:`.optuna_backend` and :mod:`.wandb_backend` -- the two ways of sampling and running trials;
- :mod:`.budget` (``--trials`` across workers) and :mod:`.liveness` (trials of dead workers) -- rules of a shared
  study; :mod:`.storage` -- where the study lives (``--storage URL``);
- :mod:`.spec` -- the sweep file (parsing, checks, search space) and the trial recipes both backends build.

The names below are re-exported so ``from inat_zoo.sweep import load_sweep`` needs no knowledge of the layout.
"""

from __future__ import annotations

from .budget import WITHDRAWN, Slots, claim_holds, count_slots
from .liveness import fail_dead_trials
from .optuna_backend import (
    DEFAULT_TRIALS,
    SWEEP_RECORD,
    decode_params,
    epoch_reporter,
    make_pruner,
    make_sampler,
    open_study,
    plan_optuna,
    run_optuna,
    sampler_seed,
    suggest,
    suggest_all,
)
from .results import find_sweeps, latest_trials, trial_summary
from .spec import (
    METHODS,
    METRICS,
    OPTUNA_DISTRIBUTIONS,
    SWEEP_KEYS,
    WANDB_ONLY_DISTRIBUTIONS,
    Sweep,
    announce_pinned,
    check_parameters_disjoint,
    check_space,
    flatten_parameters,
    load_sweep,
    normalize_parameter,
    pinned_parameters,
    search_space,
    to_wandb_config,
    trial_recipe,
)
from .storage import JOURNAL, StorageSpec, parse_storage
from .wandb_backend import require_wandb_online, run_wandb

__all__ = [
    "DEFAULT_TRIALS",
    "JOURNAL",
    "METHODS",
    "METRICS",
    "OPTUNA_DISTRIBUTIONS",
    "SWEEP_KEYS",
    "SWEEP_RECORD",
    "Slots",
    "StorageSpec",
    "WANDB_ONLY_DISTRIBUTIONS",
    "WITHDRAWN",
    "Sweep",
    "announce_pinned",
    "check_parameters_disjoint",
    "claim_holds",
    "count_slots",
    "check_space",
    "decode_params",
    "epoch_reporter",
    "fail_dead_trials",
    "find_sweeps",
    "flatten_parameters",
    "latest_trials",
    "load_sweep",
    "make_pruner",
    "make_sampler",
    "normalize_parameter",
    "open_study",
    "parse_storage",
    "pinned_parameters",
    "plan_optuna",
    "require_wandb_online",
    "run_optuna",
    "run_wandb",
    "sampler_seed",
    "search_space",
    "suggest",
    "suggest_all",
    "to_wandb_config",
    "trial_summary",
    "trial_recipe",
]
