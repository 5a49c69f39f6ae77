"""The trial budget shared by every worker of a study: ``--trials N`` finished trials, never one started beyond it.

Optuna's ``MaxTrialsCallback`` only looks after a trial ends, so N workers overshoot by up to N - 1 trials. The rule
here is claim-then-check, against the storage (the only thing all workers on all machines share):

1. before asking, a worker counts the trials that hold a slot: COMPLETE + PRUNED + RUNNING (after the trials of
   dead workers were failed, every RUNNING trial has a live worker). Full: it waits (or stops, if N finished);
2. otherwise it claims a slot by creating its trial (``study.ask()``: the trial is RUNNING in the storage), and
   only then counts again, its own trial included. More than N: it withdraws (the trial is marked FAIL and
   ``withdrawn``, its queued parameters are queued again) and tries later.

Why two workers cannot both take the last slot: each writes its claim before it reads, so whichever of them reads
last sees both claims, counts N + 1 and withdraws. In general, of any N + 1 trials that would finish, the one that
checked last saw the other N (each wrote its claim before its own check, and none of them had failed), so it
withdrew: at most N finish. Both may withdraw in a tie; a random pause before the next try breaks it.
Storages make this sound: a database commits the new trial before ``ask`` returns, and the journal file appends
it under its file lock before the next read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

WITHDRAWN = "withdrawn"  # user attribute of a trial that lost the race for the last slot; it never trained


@dataclass(frozen=True)
class Slots:
    """How the budget stands: ``finished`` (complete or pruned) and ``running`` trials of the study."""

    finished: int
    running: int

    @property
    def taken(self) -> int:
        """Slots held: finished trials plus those running now."""
        return self.finished + self.running


def count_slots(study: Any) -> Slots:
    """Read the study's trial states from the storage (fresh, not a cached copy)."""
    import optuna

    State = optuna.trial.TrialState
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return Slots(
        finished=sum(s in (State.COMPLETE, State.PRUNED) for s in states),
        running=sum(s == State.RUNNING for s in states),
    )


def claim_holds(study: Any, budget: int) -> bool:
    """After this worker's trial is RUNNING in the storage: whether the slots taken, its own included, fit ``budget``.

    Args:
        study: the ``optuna.Study``, read afresh from its storage.
        budget: the number of finished trials to reach (``--trials``).
    """
    return count_slots(study).taken <= budget


def withdraw(study: Any, trial: Any) -> None:
    """Give back the slot of ``trial`` (RUNNING, not trained): mark it withdrawn and FAIL; queue its parameters again.

    A trial popped from the queue (a retry of a dead or interrupted trial) carries parameters that must still run,
    so they go back into the queue as they were.
    """
    import optuna

    trial.set_user_attr(WITHDRAWN, True)
    frozen = next(t for t in study.get_trials(deepcopy=True) if t.number == trial.number)
    queued = "fixed_params" in frozen.system_attrs or frozen.system_attrs.get("failed_trial") is not None
    if queued:
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs={k: v for k, v in frozen.user_attrs.items() if k not in (WITHDRAWN, "worker")},
                system_attrs=frozen.system_attrs,
            )
        )


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before claiming again after withdrawing: random, so two tied workers do not tie again."""
    return rng.uniform(0.05, 0.5) * min(attempt, 6)
