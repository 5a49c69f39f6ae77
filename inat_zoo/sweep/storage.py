"""Where an Optuna study lives: the journal file in the sweep folder, or a database named by ``--storage URL``.

- no ``--storage``: Optuna's journal file ``DIR/optuna_journal.log`` (appends under a file lock), for several worker
  processes on one machine, or on machines sharing the folder's filesystem;
- ``sqlite:///path.db``: one machine only (SQLite locks the whole file; a writer waits up to
  :data:`SQLITE_LOCK_TIMEOUT_S` for the lock instead of failing at once);
- ``postgresql://...`` / ``mysql://...``: several machines; needs the driver from ``pip install 'inat-zoo[postgres]'``
  or ``'inat-zoo[mysql]'``.

A database storage fails the trial of a worker that stopped beating (Optuna's heartbeat) and queues it again
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`); the journal storage has no heartbeat in Optuna 5,
so :mod:`.liveness` has its own rule for it. Everything a user can get wrong here is found before anything is
written, and raised as a one-line :class:`UsageError`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

JOURNAL = "optuna_journal.log"
# the --storage URL from the environment: a database password stays out of `ps` (the workers get it this way)
STORAGE_ENV = "INAT_ZOO_SWEEP_STORAGE"
SQLITE_LOCK_TIMEOUT_S = 60
# Seconds between two heartbeats of a running trial on a database storage; a trial whose last beat is older than
# two intervals is failed and queued again. Tests set a short one through the environment.
HEARTBEAT_ENV = "INAT_ZOO_SWEEP_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 60
SCHEMA_RACE_ATTEMPTS = 4

# dialect -> (the SQLAlchemy driver our extra installs, the extra); SQLAlchemy's own defaults (psycopg2, mysqlclient)
# are not the ones our extras install, so a URL without a driver gets ours.
_DRIVERS = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql")}
# SQLAlchemy driver name -> the module it imports (when the two differ)
_DRIVER_MODULES = {"mysqldb": "MySQLdb"}
_URL = re.compile(r"^(?P<dialect>[a-z]+)(\+(?P<driver>[a-z0-9_]+))?://(?P<rest>.*)$")


@dataclass(frozen=True)
class StorageSpec:
    """A checked storage: ``url`` is what SQLAlchemy opens (None for the journal), ``shown`` is safe to print."""

    kind: str  # "journal" | "sqlite" | "postgresql" | "mysql"
    url: str | None
    journal: Path | None
    shown: str

    @property
    def has_heartbeat(self) -> bool:
        """Whether Optuna's heartbeat fails a dead worker's trial here (database storages; not the journal)."""
        return self.kind != "journal"


def _hide_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _require_driver(dialect: str, driver: str | None, shown: str) -> str:
    """The driver SQLAlchemy should load; a missing one is a one-line error naming the extra that installs it."""
    ours, extra = _DRIVERS[dialect]
    driver = driver or ours
    module = _DRIVER_MODULES.get(driver, driver)
    if importlib.util.find_spec(module) is None:
        raise UsageError(
            f"--storage {shown}: the {dialect} driver {module!r} is not installed; "
            f"install it with: pip install 'inat-zoo[{extra}]'"
        )
    return driver


def parse_storage(url: str | None, out: str | os.PathLike) -> StorageSpec:
    """Check ``--storage`` (None: the journal file in the sweep folder ``out``) without connecting or writing.

    Args:
        url: ``sqlite:///PATH``, ``postgresql[+driver]://USER:PASSWORD@HOST:PORT/DB``,
            ``mysql[+driver]://...``, or None.
        out: the sweep folder (holds the journal, the sweep record and the trial run folders).

    Raises:
        UsageError: a URL that is not one of the above, or a database driver that is not installed.
    """
    if url is None:
        journal = Path(out) / JOURNAL
        return StorageSpec("journal", None, journal, os.fspath(journal))
    shown = _hide_password(url)
    match = _URL.match(url)
    if match is None:
        raise UsageError(
            f"--storage {shown!r} is not a database URL; give sqlite:///PATH.db, postgresql://USER@HOST/DB or "
            "mysql://USER@HOST/DB (or no --storage for the journal file in the sweep folder)"
        )
    dialect, driver, rest = match["dialect"], match["driver"], match["rest"]
    if dialect == "sqlite":
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise UsageError(
                f"--storage {shown!r}: SQLite needs a file, as in sqlite:///sweeps.db or sqlite:////abs.db"
            )
        return StorageSpec("sqlite", url, None, shown)
    if dialect not in _DRIVERS:
        raise UsageError(f"--storage {shown!r}: unsupported database {dialect!r}; use sqlite, postgresql or mysql")
    if not rest.strip("/"):  # (postgresql:///DB is a database on the local Unix socket)
        raise UsageError(f"--storage {shown!r} names no database; as in {dialect}://USER:PASSWORD@HOST:PORT/DB")
    driver = _require_driver(dialect, driver, shown)
    return StorageSpec(dialect, f"{dialect}+{driver}://{rest}", None, shown)


def heartbeat_interval_s() -> int:
    """Seconds between heartbeats (:data:`HEARTBEAT_ENV`, default 60); a trial is stale after two silent intervals.

    Raises:
        UsageError: the environment variable is not a positive integer.
    """
    text = os.environ.get(HEARTBEAT_ENV, str(DEFAULT_HEARTBEAT_S))
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"{HEARTBEAT_ENV} must be a positive number of seconds, got {text!r}")
    return int(text)


def open_storage(spec: StorageSpec) -> Any:
    """The Optuna storage for ``spec`` (connects to a database; creates its tables on first use).

    Raises:
        UsageError: the database cannot be reached or refuses the connection (one line, password hidden).
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if spec.kind == "journal":
        return JournalStorage(JournalFileBackend(os.fspath(spec.journal)))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if spec.kind == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    interval = heartbeat_interval_s()
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return _rdb_storage(spec.url, engine_kwargs, interval)
        except Exception as e:  # SQLAlchemy's errors, with driver-specific wording
            error = e
            if not _lost_schema_race(e):
                break
            time.sleep(0.5 * (attempt + 1))
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UsageError(f"--storage {spec.shown}: cannot open the database: {_hide_password(first)}") from None


def _lost_schema_race(error: Exception) -> bool:
    """Workers started together on a fresh database race to create Optuna's tables, and the loser's CREATE fails on
    a name the winner just took (PostgreSQL: a unique violation in its catalog; others: "already exists"). The
    tables exist by then, so opening again succeeds."""
    import sqlalchemy.exc

    if isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True
    return isinstance(error, sqlalchemy.exc.OperationalError) and "already exists" in str(error)


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], interval: int) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():  # heartbeat and its retry callback are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=interval,
            grace_period=2 * interval,
            # no max_retry: a trial is retried until it finishes; each retry resumes its run folder
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
        )
