"""``inat-zoo sweep SWEEP.yaml --workers N [--devices 0,1,..]``: N worker processes of one sweep on this machine.

The launcher checks the sweep and creates (or joins) its study first, so a mistake is one error and not N, then
starts N ``inat-zoo sweep`` processes with the same sweep file, overrides, ``--out`` and ``--storage``. Each is
pinned to its GPU (``CUDA_VISIBLE_DEVICES``) or, without CUDA, to its share of this process's cores (CPU affinity
and ``OMP_NUM_THREADS``, which sets torch's intra-op threads), so workers do not fight over the same cores.
The workers share the study's budget (:mod:`.budget`); each writes its output to ``DIR/.workers/worker_<i>.log``
and the launcher shows one progress bar of the study's finished trials, read from the storage. Ctrl-C stops every
worker: each records its trial as interrupted and queues it again, so the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..errors import UsageError
from .budget import count_slots
from .liveness import WORKERS_DIR
from .optuna_backend import open_sweep_study, plan_optuna, print_summary
from .spec import Sweep
from .storage import STORAGE_ENV

STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to record their trials as interrupted before SIGTERM
PROGRESS_POLL_S = 1.0


def parse_devices(devices: str | None, workers: int | None) -> list[str | None] | None:
    """``--devices`` and ``--workers`` as one entry per worker (a GPU number, or None to choose later).

    Returns None when neither option is given: the sweep runs as one worker in this process.

    Raises:
        UsageError: ``--workers`` below 1, a ``--devices`` entry that is not a GPU number, or a device count that
            differs from ``--workers``.
    """
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if devices is None:
        return None if workers is None else [None] * workers
    ids = [d.strip() for d in devices.split(",")]
    if not all(d.isdigit() for d in ids):
        raise UsageError(f"--devices takes GPU numbers separated by commas, as in 0,1,2,3; got {devices!r}")
    if workers is not None and workers != len(ids):
        raise UsageError(f"--devices names {len(ids)} devices for --workers {workers}: give one device per worker")
    return ids


def _placements(devices: Sequence[str | None]) -> list[dict]:
    """Per worker: its environment additions and CPU cores. GPUs given or found are dealt round robin; on CPU
    each worker gets an equal share of the cores this process may use (workers share cores only beyond one each)."""
    import torch

    count = len(devices)
    if all(d is None for d in devices) and torch.cuda.is_available():
        devices = [str(i % torch.cuda.device_count()) for i in range(count)]
    if all(d is not None for d in devices):
        return [{"env": {"CUDA_VISIBLE_DEVICES": d}, "cores": None} for d in devices]
    cores = sorted(os.sched_getaffinity(0))
    shares = [cores[i::count] or [cores[i % len(cores)]] for i in range(count)]
    return [{"env": {"OMP_NUM_THREADS": str(len(share))}, "cores": share} for share in shares]


def _worker_command(args: argparse.Namespace, out: Path, budget: int) -> list[str]:
    command = [sys.executable, "-m", "inat_zoo.sweep", os.fspath(args.sweep_file), "--backend", "optuna"]
    command += ["--out", os.fspath(out), "--trials", str(budget)]
    if args.recipe:
        command += ["--recipe", os.fspath(args.recipe)]
    return [*command, *args.overrides]  # the storage URL goes through the environment (_start), never argv


def _start(command: list[str], placement: dict, log: IO[bytes], storage: str | None) -> subprocess.Popen:
    cores = placement["cores"]
    # a database URL may hold a password: in the environment it stays out of the process list other users can read
    storage_env = {STORAGE_ENV: storage} if storage else {}
    return subprocess.Popen(
        command,
        env={**os.environ, **placement["env"], **storage_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # its own process group: Ctrl-C reaches the launcher only, which stops each worker once (below)
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )


def _stop(workers: Sequence[subprocess.Popen]) -> None:
    """SIGINT to every worker's process group (its trial is recorded as interrupted), then SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        alive = [w for w in workers if w.poll() is None]
        for worker in alive:
            try:
                os.killpg(worker.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while any(w.poll() is None for w in alive) and time.monotonic() < deadline:
            time.sleep(0.2)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    """Print, unless the output is a pipe its reader has closed (the launcher still ends cleanly)."""
    try:
        print(message, flush=True)
    except (BrokenPipeError, OSError):
        pass


def _follow(study, budget: int, workers: Sequence[subprocess.Popen]) -> None:
    """One progress bar of the whole study (finished trials of ``budget``) until every worker has exited."""
    from tqdm import tqdm

    with tqdm(total=budget, desc="sweep", unit="trial", disable=None) as bar:
        while True:
            done = all(w.poll() is not None for w in workers)
            slots = count_slots(study)
            bar.n = min(slots.finished, budget)
            bar.set_postfix(running=slots.running, workers=sum(w.poll() is None for w in workers), refresh=False)
            bar.refresh()
            if done:
                return
            time.sleep(PROGRESS_POLL_S)


def _last_line(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def run_workers(sweep: Sweep, args: argparse.Namespace, out: Path, devices: Sequence[str | None]) -> int:
    """Run ``len(devices)`` workers of the sweep on this machine until the study's budget is reached.

    Returns 0 when every worker ended well, 1 when one failed (its log's last line is printed), 130 on Ctrl-C.

    Raises:
        UsageError: whatever :func:`plan_optuna` and :func:`open_sweep_study` refuse, before any worker starts.
    """
    plan = plan_optuna(sweep, args.overrides, args.trials, out, args.storage)
    study = open_sweep_study(plan, "launcher")
    finished = count_slots(study).finished
    if finished >= plan.budget:
        print(f"sweep: {out} already has {finished} finished trials (--trials {plan.budget})")
        return 0
    logs = out / WORKERS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    command = _worker_command(args, out, plan.budget)
    workers, log_paths = [], []
    for i, placement in enumerate(_placements(devices)):
        log_paths.append(logs / f"worker_{i}.log")
        with open(log_paths[-1], "ab") as log:  # the child keeps its own copy of the descriptor
            workers.append(_start(command, placement, log, args.storage))
    print(f"sweep: {len(workers)} workers on {plan.storage.shown}; their output: {logs}/worker_<i>.log")
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM to the launcher stops its workers too
    try:
        _follow(study, plan.budget, workers)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Every way out stops the workers first, before anything is printed: a Ctrl-C on `inat-zoo sweep ... | tail`
        # also ends `tail`, and a print to its closed pipe raising here must not leave the workers training.
        signal.signal(signal.SIGTERM, previous)
        _stop(workers)
    if interrupted:
        _say("sweep: stopped the workers (their trials are queued again; rerun the command to resume)")
        return 130
    failed = [(i, w.returncode) for i, w in enumerate(workers) if w.returncode != 0]
    for i, code in failed:
        print(f"sweep: worker {i} exited with {code}: {_last_line(log_paths[i])}", file=sys.stderr)
    print_summary(study, sweep, out)
    return 1 if failed else 0
