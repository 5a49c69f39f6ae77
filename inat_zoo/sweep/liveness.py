"""Which RUNNING trials still have a live worker, and what happens to those that do not.

A worker that dies mid-trial (SIGKILL, a crashed machine) leaves its trial RUNNING in the storage. Such a trial is
failed and queued again with its parameters and run folder (the retry resumes from its last complete checkpoint),
so it never counts as finished and never runs twice to completion:

- database storages: Optuna's heartbeat. Each running trial beats every ``heartbeat_interval`` seconds; a trial
  silent for two intervals is failed by :func:`optuna.storages.fail_stale_trials`, and the storage's
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues it again.
- the journal file: Optuna 5 has no heartbeat there, so each worker holds an exclusive ``flock`` on its own lease
  file ``DIR/.workers/<worker>.lock`` for its whole life and records its name in each trial it runs. The kernel
  drops the lock the moment the process dies, however it dies, so "the lease file is not locked" means "the worker
  is dead": no clock, no grace period. (A trial with no worker recorded, from an older inat-zoo or a worker killed
  between claiming the trial and naming itself, is judged by age: RUNNING for longer than the grace period.)

Failing goes through the storage, which lets only one of several racing workers move a trial from RUNNING to
FAIL; only that worker queues the retry, so a dead trial is retried once.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import secrets
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .storage import StorageSpec

WORKERS_DIR = ".workers"
# A RUNNING trial that names no worker is judged dead after this long (journal storage only).
UNNAMED_TRIAL_GRACE_S = 120


def worker_name() -> str:
    """A name no other worker has, now or later: host, process id and a random part (process ids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def worker_lease(out: Path, name: str) -> Iterator[Path]:
    """Hold ``out/.workers/<name>.lock`` locked while the worker lives; removed again on a clean exit."""
    folder = out / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    with open(path, "a+") as lease:
        fcntl.flock(lease, fcntl.LOCK_EX)  # a fresh name: nobody else holds it
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fcntl.flock(lease, fcntl.LOCK_UN)


def _worker_is_dead(out: Path, name: str) -> bool:
    path = out / WORKERS_DIR / f"{name}.lock"
    try:
        lease = open(path, "r+")  # noqa: SIM115  (closed below)
    except FileNotFoundError:
        return True  # its lease is gone: the worker ended (or a checker already found it dead)
    with lease:
        try:
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)  # a dead worker's lease: nobody will hold it again
        fcntl.flock(lease, fcntl.LOCK_UN)
        return True


def _journal_trial_is_dead(out: Path, trial: Any, now: datetime.datetime) -> bool:
    name = trial.user_attrs.get("worker")
    if name is not None:
        return _worker_is_dead(out, name)
    started = trial.datetime_start or now
    return (now - started).total_seconds() > UNNAMED_TRIAL_GRACE_S


def _fail_and_retry(study: Any, trial: Any) -> bool:
    """Move ``trial`` from RUNNING to FAIL and queue it again; False when another worker did it first."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    try:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # finished meanwhile, or failed by another
        return False
    failed = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback()(study, failed)  # the same retry a database storage's heartbeat makes
    return True


def fail_dead_trials(study: Any, spec: StorageSpec, out: Path) -> list[int]:
    """Fail the RUNNING trials whose worker is dead and queue each again once; returns their numbers.

    Args:
        study: the ``optuna.Study`` of the sweep.
        spec: its storage (database storages use Optuna's heartbeat, the journal file the worker leases).
        out: the sweep folder that holds the leases (``out/.workers/``).
    """
    import optuna

    running = optuna.trial.TrialState.RUNNING
    if spec.has_heartbeat:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
        # trials that left RUNNING in between for another reason (finished) are not ours to report
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        return sorted((before - after) & failed)
    now = datetime.datetime.now()
    return [
        trial.number
        for trial in study.get_trials(deepcopy=True, states=(running,))
        if _journal_trial_is_dead(out, trial, now) and _fail_and_retry(study, trial)
    ]
