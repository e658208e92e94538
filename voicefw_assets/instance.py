"""The local Dagster instance: where it lives, its dagster.yaml, and recovery from killed runs.

A run killed with SIGKILL (its whole process group, even inside the step holding the warehouse)
leaves its run record STARTED. The warehouse itself recovers by itself (DuckDB replays or drops its
WAL, the flock dies with the process), but a STARTED run counts against the `duckdb_warehouse` pool
until something marks it failed. Dagster's own parts do that where they can see the run's process:
the code server of `voicefw up` fails runs whose worker died, and `run_monitoring` fails runs stuck
starting. Nothing of Dagster watches an in-process `voicefw materialize`, nor the runs of a
`voicefw up` that was killed as a whole, so `sweep_dead_runs` does, at the start of every
`voicefw materialize` and `voicefw up`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

from voicefw_assets.settings import REPO_ROOT

YAML_MARKER = "# voicefw local instance v2"
LOCAL_DAGSTER_YAML = f"""\
{YAML_MARKER} (written by `voicefw`; delete this line to keep your own edits)
# SQLite storage under this folder.
telemetry:
  enabled: false
concurrency:
  pools:
    # DuckDB has one writer: every warehouse step is in pool duckdb_warehouse. With granularity
    # `run` the run queue starts one such run at a time (others wait visibly as queued) and no
    # step holds a slot a killed process could leak; Warehouse.connect()'s file lock covers runs
    # started outside the queue (voicefw materialize).
    granularity: run
    default_limit: 1
run_coordinator:       # runs here are short: look for queued runs every second, not every 5 s
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_monitoring:        # fail runs stuck starting; free slots of ended runs (op granularity)
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 10
"""

# tags on runs this process launches, so a later process can tell whether their process still lives
OWNER_HOST, OWNER_PID, OWNER_STARTED = "voicefw/host", "voicefw/pid", "voicefw/pid_started"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to ./.dagster_home (git-ignored) with our SQLite dagster.yaml. A yaml we
    wrote earlier is brought up to date; one without our marker line is the user's and stays."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    yaml_file = home / "dagster.yaml"
    if not yaml_file.exists() or (yaml_file.read_text().startswith("# voicefw local instance") and yaml_file.read_text() != LOCAL_DAGSTER_YAML):
        yaml_file.write_text(LOCAL_DAGSTER_YAML)
    return home


def quiet_dagster_warnings() -> None:
    """Our entry points run on features Dagster labels beta/preview/superseded on purpose (each is
    justified in docs/architecture.md); their warnings on every process start drown real ones."""
    from dagster import BetaWarning, PreviewWarning, SupersessionWarning

    for category in (BetaWarning, PreviewWarning, SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)


def owner_tags() -> dict[str, str]:
    import psutil

    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()), OWNER_STARTED: f"{psutil.Process().create_time():.3f}"}


def _owner_alive(tags: dict[str, str]) -> bool:
    import psutil

    try:
        return abs(psutil.Process(int(tags[OWNER_PID])).create_time() - float(tags[OWNER_STARTED])) < 1.0
    except (psutil.NoSuchProcess, ValueError, KeyError):
        return False


def sweep_dead_runs(instance, log: Callable[[str], None] = print, orphans_of_daemon: bool = False) -> list[str]:
    """Mark failed the unfinished runs whose process is gone: runs a voicefw process on this host
    launched in-process and whose process is dead, and with `orphans_of_daemon` (at `voicefw up`
    start, when no other `voicefw up` lives) every other unfinished run, whose code server and
    daemon died with the `voicefw up` that launched them. Returns the run ids marked."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    host = socket.gethostname()
    marked = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=unfinished)):
        run, tags = record.dagster_run, record.dagster_run.tags
        if OWNER_PID in tags:
            if tags.get(OWNER_HOST) != host or _owner_alive(tags):
                continue
            why = f"its process (pid {tags[OWNER_PID]} on {host}) is gone"
        elif orphans_of_daemon:
            why = "the `voicefw up` (code server and daemon) that launched it is gone"
        else:
            continue
        # DagsterInstance has no public call for this; it is what Dagster's own run monitoring and
        # code server call for a dead run worker (tests/test_crash_recovery.py fails if it changes)
        instance.report_run_failed(run, f"marked failed by voicefw: {why} (killed?)")
        marked.append(run.run_id)
        log(f"run {run.run_id[:8]} ({run.job_name}) was left {run.status.value} by a killed process: marked failed")
    return marked


def hold_lock(lock_file: Path) -> int | None:
    """Take an exclusive lock for the rest of this process (and of children it passes the fd to);
    returns the fd, or None when another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
