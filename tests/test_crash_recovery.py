"""`voicefw materialize` killed with SIGKILL (its whole process group), again and again, then run
once more: it finishes by itself, with the tables of a run nobody interrupted, and no run is
left looking alive in the instance."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from voicefw_assets.settings import REPO_ROOT
from voicefw_assets.simulate import simulate

VOICEFW = str(REPO_ROOT / ".venv" / "bin" / "voicefw")
INGEST = ["materialize", "--select", "raw_cdrs,mapped_cdrs,rejected_cdrs"]


def snapshot(home: Path) -> dict:
    """Every ingest table, sorted, and what is in quarantine (registration times aside)."""
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        out = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
               for t in ("mapped_cdrs", "rejected_cdrs", "landing_file_days")}
        out["ingest_rows"] = con.execute("SELECT * EXCLUDE (batch) FROM ingest_rows ORDER BY ALL").fetchall()
        out["landing_files"] = con.execute("SELECT * EXCLUDE (registered_at) FROM landing_files ORDER BY ALL").fetchall()
    finally:
        con.close()
    out["quarantine"] = sorted(p.name for p in (home / "quarantine").rglob("*") if p.is_file() and not p.name.endswith(".json"))
    return out


def warehouse_held(home: Path) -> bool:
    lock = home / "warehouse.duckdb.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def run_started(instance: DagsterInstance) -> bool:
    return any(r.status == DagsterRunStatus.STARTED for r in instance.get_runs())


def step_started(instance: DagsterInstance) -> bool:
    """A started run whose ingest step has begun (its STEP_START event is in the log)."""
    return any(instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_START)
               for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED)


@pytest.mark.timeout(400)
def test_sigkill_mid_ingest_then_a_rerun_gives_the_tables_of_a_clean_run(home, tmp_path):
    staging = tmp_path / "staging"
    simulate(staging, days=2, calls_per_day=3000, seed=5)

    def fresh() -> None:
        for p in ("landing", "quarantine", "warehouse.duckdb", "warehouse.duckdb.wal", "warehouse.duckdb.lock"):
            target = home / p
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        shutil.copytree(staging / "landing", home / "landing")

    fresh()
    clean = subprocess.run([VOICEFW, *INGEST], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    expected = snapshot(home)
    assert expected["mapped_cdrs"] and expected["quarantine"]

    fresh()
    instance = DagsterInstance.get()
    # kill while the CLI reads the registry, right after its run started, and deep inside the step
    for killed_when in ("warehouse held", "run started", "step started + 0.2 s"):
        proc = subprocess.Popen([VOICEFW, *INGEST], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        ready = {"warehouse held": lambda: warehouse_held(home),
                 "run started": lambda: run_started(instance) and warehouse_held(home),
                 "step started + 0.2 s": lambda: step_started(instance)}[killed_when]
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"finished before it could be killed ({killed_when})"
        if killed_when.endswith("0.2 s"):
            time.sleep(0.2)  # inside the step that holds the warehouse (one run ingests every operator-day)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = [r.run_id for r in instance.get_runs() if not r.is_finished]
    assert killed, "no run was caught mid-flight"

    rerun = subprocess.run([VOICEFW, *INGEST], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert snapshot(home) == expected
    # the dead runs were found and failed by the rerun's sweep; nothing is left looking alive
    for run_id in killed:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
        assert f"run {run_id[:8]}" in rerun.stdout
    assert all(r.is_finished for r in instance.get_runs())
