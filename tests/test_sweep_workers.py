"""Sweeps that outgrow one process: several workers on one study (journal file, SQLite, a real PostgreSQL server),
the shared --trials budget, a worker killed mid-trial, and the mistakes refused before anything is written.

The multi-process tests start real `python -m inat_zoo.sweep` processes on the tiny sample: about 5 s of imports
per process and a second or two per trial, so each keeps to 2 trials."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from inat_zoo.cli import main
from inat_zoo.errors import UsageError
from inat_zoo.sweep import Slots, claim_holds, count_slots, load_sweep, open_study, parse_storage, plan_optuna
from inat_zoo.sweep.budget import WITHDRAWN, withdraw
from inat_zoo.sweep.optuna_backend import ClaimWithdrawn, TrialRunner, open_sweep_study
from inat_zoo.sweep.storage import HEARTBEAT_ENV

from .test_sweep import SWEEPS, TINY
from .train_helpers import REPO, subprocess_env

State = optuna.trial.TrialState
SWEEP_FILE = str(SWEEPS / "flexible_cnn.yaml")
STUDY = "flexible_cnn"
DIST = {"x": optuna.distributions.IntDistribution(0, 100)}


# ------------------------------------------------------------------------------------------- the budget rule
def test_a_claim_holds_only_within_the_budget(tmp_path):
    study = open_study(tmp_path, "s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"x": 1}, distributions=DIST, value=0.5))
    mine = study.ask(DIST)
    assert count_slots(study).taken == 2 and claim_holds(study, budget=2)
    # two workers race for the last slot: each created its trial before checking, so both see 3 > 2 and withdraw
    rival = study.ask(DIST)
    assert not claim_holds(study, budget=2)
    withdraw(study, rival)
    study.tell(rival, state=State.FAIL)
    assert claim_holds(study, budget=2)  # the rival's slot is free again: the budget is never overshot
    study.tell(mine, 0.7)
    assert count_slots(study).finished == 2 and study.trials[2].user_attrs[WITHDRAWN] is True


def test_a_withdrawn_retry_goes_back_to_the_queue(tmp_path):
    """A retry popped from the queue carries parameters that must still run: withdrawing it queues them again."""
    study = open_study(tmp_path, "s", direction="maximize")
    study.enqueue_trial({"x": 42}, user_attrs={"run_dir": "trial_7", "retry_of": 7})
    popped = study.ask(DIST)
    assert popped.params == {"x": 42}
    withdraw(study, popped)
    study.tell(popped, state=State.FAIL)
    again = study.ask(DIST)
    assert again.params == {"x": 42} and again.user_attrs["run_dir"] == "trial_7"


def test_a_worker_that_loses_the_race_for_the_last_slot_does_not_train(tmp_path, sample_root):
    """The race the budget rule exists for, made deterministic: this worker counted one free slot, then another
    worker claimed it before this one's trial was created. This worker's own check sees 3 claims for 2 slots."""
    plan = plan_optuna(load_sweep(SWEEP_FILE), [f"data.root={sample_root}", *TINY], 2, tmp_path / "sweep")
    study = open_sweep_study(plan, "this-worker")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    study.ask()  # the rival's claim: RUNNING in the storage
    runner = TrialRunner(plan, "this-worker")
    study.optimize(runner, n_trials=1, catch=(ClaimWithdrawn,))
    mine = study.trials[-1]
    assert runner.withdrawn and mine.state == State.FAIL and mine.user_attrs[WITHDRAWN] is True
    assert run_folders(plan.out) == []  # it never trained
    assert count_slots(study) == Slots(finished=1, running=1)


# -------------------------------------------------------------------------------------- one-line refusals
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("inat-zoo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--storage", "mysql://me:secret@db.example/sweeps"],
            "driver 'pymysql' is not installed; install it with: pip install 'inat-zoo[mysql]'",
        ),
        (["--storage", "mysql+mysqldb://me@db/sweeps"], "driver 'MySQLdb' is not installed"),
        (["--storage", "postgresql+psycopg2://me@db/sweeps"], "pip install 'inat-zoo[postgres]'"),
        (["--storage", "runs/study.db"], "is not a database URL; give sqlite:///PATH.db"),
        (["--storage", "oracle://me@db/sweeps"], "unsupported database 'oracle'"),
        (["--storage", "postgresql://"], "names no database"),
        (["--storage", "sqlite:///:memory:"], "SQLite needs a file"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--workers", "2", "--devices", "0,1,2"], "--devices names 3 devices for --workers 2"),
        (["--devices", "0,gpu1"], "--devices takes GPU numbers separated by commas"),
        (["--sweep-id", "me/proj/abc123"], "--sweep-id joins a W&B sweep: it needs --backend wandb"),
    ],
)
def test_mistakes_are_one_line_before_anything_is_written(tmp_path, sample_root, capsys, options, message):
    out = tmp_path / "out"
    args = ["sweep", SWEEP_FILE, f"data.root={sample_root}", *TINY, "--out", str(out), *options]
    assert main(args) == 2
    err = one_error_line(capsys)
    assert message in err and "secret" not in err  # a password never reaches the terminal
    assert not out.exists()


def test_the_storage_url_travels_in_the_environment_not_the_command_line(tmp_path, sample_root, capsys, monkeypatch):
    """A database password in argv is readable by every user through `ps`: workers get the URL from the environment,
    and so may the user (INAT_ZOO_SWEEP_STORAGE)."""
    import argparse

    from inat_zoo.sweep.storage import STORAGE_ENV
    from inat_zoo.sweep.workers import _worker_command

    args = argparse.Namespace(sweep_file=SWEEP_FILE, recipe=None, storage="postgresql://me:secret@db/s", overrides=[])
    assert "secret" not in " ".join(_worker_command(args, tmp_path / "out", 2))
    monkeypatch.setenv(STORAGE_ENV, "oracle://me:secret@db/sweeps")
    out = tmp_path / "out"
    assert main(["sweep", SWEEP_FILE, f"data.root={sample_root}", *TINY, "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "unsupported database 'oracle'" in err and "secret" not in err and not out.exists()


def test_options_of_the_other_backend_are_refused(tmp_path, capsys):
    for options in (["--workers", "2"], ["--storage", "sqlite:///x.db"]):
        assert main(["sweep", SWEEP_FILE, "--backend", "wandb", "--out", str(tmp_path / "w"), *options]) == 2
        assert "belong to --backend optuna; with W&B, run one agent per GPU or machine" in one_error_line(capsys)
    with pytest.raises(UsageError, match="--sweep-id must be ENTITY/PROJECT/ID"):
        from inat_zoo.sweep.wandb_backend import _parse_sweep_id

        _parse_sweep_id("abc123")


def test_an_unreachable_database_is_one_line(tmp_path, sample_root, capsys):
    port = free_port()  # nothing listens there
    out = tmp_path / "out"
    args = ["sweep", SWEEP_FILE, f"data.root={sample_root}", *TINY, "--out", str(out)]
    assert main([*args, "--storage", f"postgresql://me:secret@127.0.0.1:{port}/sweeps"]) == 2
    err = capsys.readouterr().err  # after the note of the pinned keys, one error line
    assert err.splitlines()[-1].startswith("inat-zoo: error: ") and "Traceback" not in err
    assert "cannot open the database" in err and "secret" not in err and "me:***@" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------ real worker processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(out: Path, sample_root: Path, *options: str, env: dict | None = None) -> subprocess.Popen:
    """One `inat-zoo sweep` process (`python -m inat_zoo.sweep`), as a user would start it in another terminal."""
    command = [sys.executable, "-m", "inat_zoo.sweep", SWEEP_FILE, "--out", str(out), *options]
    command += [f"data.root={sample_root}", *TINY]
    environment = {**subprocess_env(), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(worker: subprocess.Popen) -> str:
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output[-3000:]
    return output


def run_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def assert_budget_kept(out: Path, budget: int, storage: str | None = None) -> list:
    """Exactly ``budget`` finished trials, each in its own complete run folder; no other trial folder exists."""
    trials = open_study(out, STUDY, storage).trials
    finished = [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(finished) == budget, [(t.number, t.state.name) for t in trials]
    folders = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(folders)) == budget  # each trial in its own folder: no two workers shared one
    assert run_folders(out) == sorted(folders)  # nothing started beyond the budget
    assert all((out / f / "metrics.json").is_file() for f in folders)
    assert not any(t.state == State.RUNNING for t in trials)
    assert all(t.state == State.FAIL for t in trials if t.user_attrs.get(WITHDRAWN))
    return finished


def test_two_workers_on_one_journal_share_the_budget(tmp_path, sample_root):
    out = tmp_path / "sweep"
    workers = [start_worker(out, sample_root, "--trials", "2") for _ in range(2)]
    outputs = [finish(w) for w in workers]
    finished = assert_budget_kept(out, 2)
    # the workers sampled with their own seeds: the two trials drew different parameters
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 2
    assert all("2 finished trials" in o for o in outputs)


def test_one_command_starts_workers_on_sqlite(tmp_path, sample_root, capsys):
    """`--workers 2` (the launcher runs here, its two workers are real processes, each on its share of the cores)
    follows the study in the database; `--storage sqlite:///...` is the one-machine database."""
    out = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["sweep", SWEEP_FILE, "--out", str(out), "--trials", "2", "--storage", storage, "--workers", "2"]
    assert main([*args, f"data.root={sample_root}", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 2 workers on sqlite:///" in printed and "sweep: 2 finished trials" in printed
    finished = assert_budget_kept(out, 2, storage)
    logs = sorted(p.name for p in (out / ".workers").glob("worker_*.log"))
    assert logs == ["worker_0.log", "worker_1.log"]
    assert {t.user_attrs["worker"].rsplit("-", 2)[0] for t in finished} == {socket.gethostname()}
    # the report reads the study from the database: every trial, whichever worker ran it
    assert main(["report", str(out), "--storage", storage]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| trial_")]
    assert sorted(line.split(" | ")[0][2:] for line in table) == sorted(t.user_attrs["run_dir"] for t in finished)


def trials_of(worker: subprocess.Popen, out: Path, storage: str) -> list:
    """The RUNNING trials ``worker`` holds (each trial records its worker: host-pid-token); none before the study."""
    try:
        trials = open_study(out, STUDY, storage).get_trials(deepcopy=False, states=(State.RUNNING,))
    except UsageError:  # the workers have not created the study yet
        return []
    return [t for t in trials if f"-{worker.pid}-" in t.user_attrs.get("worker", "")]


def test_a_worker_killed_mid_trial_leaves_its_trial_to_be_retried(tmp_path, sample_root):
    """Two workers; one is SIGKILLed in the middle of a trial (SQLite: Optuna's heartbeat, every second here, so
    its trial is stale after 2 s). The other fails that trial, runs it again in its folder from its checkpoint, and
    the study ends with exactly 2 finished runs; the dead trial never counts."""
    out = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    options = ("--trials", "2", "--storage", storage, "train.epochs=3")
    doomed, survivor = (start_worker(out, sample_root, *options, env={HEARTBEAT_ENV: "1"}) for _ in range(2))
    deadline = time.monotonic() + 180
    while True:  # until the doomed worker has finished an epoch of its trial: it is mid-trial
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()[0][-3000:]
        held = trials_of(doomed, out, storage)
        if held and (out / held[0].user_attrs.get("run_dir", "-") / "history.jsonl").is_file():
            break
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    killed = held[0]

    assert "2 finished trials" in finish(survivor)
    trials = open_study(out, STUDY, storage).trials
    assert trials[killed.number].state == State.FAIL  # never counted as finished
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == State.COMPLETE  # run again once, to completion
    assert retries[0].user_attrs["run_dir"] == killed.user_attrs["run_dir"] and retries[0].params == killed.params
    assert_budget_kept(out, 2, storage)


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            pass
    return pids


@pytest.mark.parametrize("how", ["ctrl-c with a closed pipe", "sigterm"])
def test_stopping_the_launcher_stops_its_workers(tmp_path, sample_root, how):
    """`inat-zoo sweep ... --workers 2 | tail` and Ctrl-C: the terminal's SIGINT also ends `tail`, so the launcher's
    output pipe is closed when it handles the interrupt; a SIGTERM (a job scheduler) is the other way to stop it.
    Either way no worker is left training."""
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "inat_zoo.cli", "sweep", SWEEP_FILE, "--out", str(out), "--trials", "2",
               "--workers", "2", f"data.root={sample_root}", *TINY, "train.epochs=1000"]  # fmt: skip
    environment = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len([p for p in _processes_naming(str(out)) if p != launcher.pid]) < 2:  # both workers started
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.2)
    if how == "sigterm":
        launcher.send_signal(signal.SIGTERM)
    else:
        launcher.stdout.close()  # `tail` is gone
        launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=120)
    deadline = time.monotonic() + 5  # the launcher waits for its workers: at most a moment for the kernel to reap
    while _processes_naming(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(str(out)) == []


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 at a free port, stopped and removed after the tests.

    initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user, in a folder it owns.
    """
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl); `.ci/run` installs it")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="inat_zoo_pg_"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()

    def pg(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_a_postgresql_server_share_the_budget(tmp_path, sample_root, postgres_url, capsys):
    """Two machines in miniature: each worker has its own sweep folder, the study lives in PostgreSQL; the report
    on one machine lists every trial, those of the other machine from what the study recorded."""
    outs = [tmp_path / "machine_a", tmp_path / "machine_b"]
    workers = [start_worker(out, sample_root, "--trials", "2", "--storage", postgres_url) for out in outs]
    for worker in workers:
        finish(worker)
    study = open_study(outs[0], STUDY, postgres_url)
    finished = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(finished) == 2 and not any(t.state == State.RUNNING for t in study.trials)
    on_disk = [f for out in outs for f in run_folders(out)]
    assert sorted(on_disk) == sorted(t.user_attrs["run_dir"] for t in finished)  # distinct, none beyond 2
    assert parse_storage(postgres_url, outs[0]).url.startswith("postgresql+psycopg://")
    for where in ([str(outs[0])], []):  # a sweep folder and its database, or the database alone
        assert main(["report", *where, "--storage", postgres_url, "--out", str(tmp_path / "report")]) == 0
        table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| trial_")]
        assert sorted(line.split(" | ")[0][2:] for line in table) == sorted(t.user_attrs["run_dir"] for t in finished)
        for t in finished:  # the validation accuracy the study recorded, wherever the run folder is
            row = next(line for line in table if line.startswith(f"| {t.user_attrs['run_dir']} |"))
            assert f"{100 * t.user_attrs['val_accuracy']:.2f}%" in row
