"""The docker deployment's dagster.yaml, for real: Postgres storage, the drop sensor, ingest runs,
and the daemon of that deployment (`dagster-daemon run`, as its container runs it).

DAGSTER_HOME holds a copy of docker/dagster.yaml (storage from DAGSTER_PG_* env vars); the
server is the throwaway cluster from tests/postgres.py, a fresh database per test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions, build_sensor_context

from resources import default_resources
from sensors import cdr_drop_sensor
from tests.postgres import PostgresServer
from voicefw_assets.assets.ingest import ingest_assets, ingest_job

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
HEADER = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,sip_code,q850_cause,disconnect_initiator,duration,ring_ms\n"


def cdr(call_id: str, start: str, sip: str = "487") -> str:
    answered = sip == "200"
    connect = start.replace(":00+", ":03+") if answered else ""
    return (
        f"{call_id},{start},{connect},{start.replace(':00+', ':09+')},447700900123,4915112345678,"
        f"gw_in,gw_out,{sip},,orig,{6 if answered else 0},{3000 if answered else 9000}\n"
    )


@pytest.fixture
def pg_instance(home, postgres_server: PostgresServer, postgres_db: str, monkeypatch):
    """DagsterInstance.get() on docker/dagster.yaml, pointing at a fresh Postgres database."""
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    shutil.copy(REPO_ROOT / "docker" / "dagster.yaml", dagster_home / "dagster.yaml")
    for name, value in postgres_server.env(postgres_db).items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.get() as instance:
        yield instance


def test_docker_dagster_yaml_stores_runs_and_events_in_postgres(pg_instance, postgres_server, postgres_db, home):
    instance = pg_instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

    landing = home / "landing" / "operator_c"
    landing.mkdir(parents=True)
    (landing / "sw_0001.csv").write_text(
        HEADER
        + cdr("c1", "2026-11-01T23:59:00+00:00", "200")
        + cdr("c2", "2026-11-02T00:01:00+00:00")
        + cdr("c3", "2026-11-02T08:30:00+00:00", "486")
    )

    # one sensor tick, evaluated against the Postgres-backed instance: one run for both days
    tick = cdr_drop_sensor(build_sensor_context(instance=instance, resources=default_resources()))
    (request,) = [r for r in tick.run_requests if r.job_name == ingest_job.name]
    (feed_check,) = [r for r in tick.run_requests if r.job_name != ingest_job.name]  # the feed's first files: check it
    assert [k.asset_key.to_user_string() for k in feed_check.asset_check_keys] == ["landing/operator_c"]
    assert request.tags["dagster/asset_partition_range_start"] == "2026-11-01|operator_c"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-11-02|operator_c"
    for add in tick.dynamic_partitions_requests:  # the operator and the days, as the daemon adds them
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    keys = ["2026-11-01|operator_c", "2026-11-02|operator_c"]

    # the run it requests, executed as the daemon would launch it
    defs = Definitions(assets=ingest_assets, jobs=[ingest_job], sensors=[cdr_drop_sensor], resources=default_resources())
    result = defs.resolve_job_def(ingest_job.name).execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    run_ids = [result.run_id]

    # read back through the instance ...
    records = instance.fetch_materializations(AssetKey("mapped_cdrs"), limit=100).records
    rows = {r.asset_materialization.partition: r.asset_materialization.metadata["dagster/row_count"].value for r in records}
    assert rows == {"2026-11-01|operator_c": 1, "2026-11-02|operator_c": 2}
    for run_id in run_ids:
        assert instance.get_run_by_id(run_id).is_success

    # ... and straight from Postgres, so nothing is in a local SQLite file by mistake
    with postgres_server.connect(postgres_db) as con, con.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs ORDER BY create_timestamp")
        assert sorted(cur.fetchall()) == sorted((rid, "SUCCESS") for rid in run_ids)
        cur.execute(
            """SELECT asset_key, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'
               GROUP BY asset_key ORDER BY asset_key"""
        )
        assert cur.fetchall() == [('["mapped_cdrs"]', 2), ('["raw_cdrs"]', 2), ('["rejected_cdrs"]', 2)]
        cur.execute(
            "SELECT partition, count(*) FROM asset_check_executions WHERE run_id = ANY(%s) AND execution_status <> 'PLANNED' GROUP BY 1 ORDER BY 1",
            (run_ids,),
        )
        assert cur.fetchall() == [(k, 4) for k in keys]  # four checks per partition, each stored with its partition
    assert not list(Path(os.environ["DAGSTER_HOME"]).glob("**/*.db"))


def _ingest_runs(instance) -> list:
    return [r for r in instance.get_runs() if r.job_name == ingest_job.name]


def _wait(what: str, probe, timeout_s: float, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


@pytest.mark.timeout(300)
def test_the_daemon_ingests_drops_once_even_with_a_lost_cursor(pg_instance, home, tmp_path):
    """`dagster-daemon run` on docker/dagster.yaml and the real code location: the drop sensor's
    tick, the Postgres run queue and the run launcher ingest a drop in one run; with the cursor
    deleted the sensor finds everything already ingested and starts nothing; a new day starts one run."""
    instance = pg_instance
    landing = home / "landing" / "operator_c"
    landing.mkdir(parents=True)
    (landing / "a.csv").write_text(HEADER + cdr("a1", "2026-11-03T10:00:00+00:00") + cdr("a2", "2026-11-04T10:00:00+00:00"))
    env = {**os.environ, "VOICEFW_SENSOR_INTERVAL_S": "1", "VOICEFW_AUTOMATION_INTERVAL_S": "3600", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "daemon.log"
    workspace = ["-w", str(REPO_ROOT / "workspace.yaml")]
    with log.open("wb") as out:
        daemon = subprocess.Popen([str(VENV_BIN / "dagster-daemon"), "run", *workspace], cwd=REPO_ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        done = _wait("the sensor's ingest run to succeed", lambda: [r for r in _ingest_runs(instance) if r.status == DagsterRunStatus.SUCCESS], 150, log)
        (run,) = done
        assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
            "2026-11-03|operator_c", "2026-11-04|operator_c")
        mapped = instance.fetch_materializations(AssetKey("mapped_cdrs"), limit=10).records
        assert sorted(r.partition_key for r in mapped) == ["2026-11-03|operator_c", "2026-11-04|operator_c"]

        # cursor lost: the registry says the file is ingested, so the sensor starts nothing
        subprocess.run([str(VENV_BIN / "dagster"), "sensor", "cursor", "cdr_drop_sensor", "--delete", *workspace],
                       cwd=REPO_ROOT, env=env, check=True, capture_output=True, input="y\n", text=True)
        time.sleep(6)
        assert len(_ingest_runs(instance)) == 1

        (landing / "b.csv").write_text(HEADER + cdr("b1", "2026-11-05T10:00:00+00:00"))
        new = _wait("a run for the new day", lambda: [r for r in _ingest_runs(instance) if r.run_id != run.run_id], 60, log)
        assert [r.tags.get("dagster/partition") for r in new] == ["2026-11-05|operator_c"]
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
