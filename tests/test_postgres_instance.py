"""The docker deployment's dagster.yaml, for real: Postgres storage, a sensor tick, ingest runs.

DAGSTER_HOME holds a copy of docker/dagster.yaml (storage from DAGSTER_PG_* env vars); the
server is the throwaway cluster from tests/postgres.py, a fresh database per test.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions, build_sensor_context
from dagster._core.scheduler.instigation import InstigatorType, SensorInstigatorData, TickStatus

from resources import default_resources
from resources.warehouse import WAREHOUSE_POOL
from sensors import build_cdr_drop_sensor, cdr_drop_sensor
from tests.postgres import PostgresServer
from voicefw_assets.assets.ingest import ingest_assets, ingest_job

REPO_ROOT = Path(__file__).resolve().parent.parent
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

    # one sensor tick, evaluated against the Postgres-backed instance
    tick = cdr_drop_sensor(build_sensor_context(instance=instance, resources=default_resources()))
    keys = sorted(str(r.partition_key) for r in tick.run_requests)
    assert keys == ["2026-11-01|operator_c", "2026-11-02|operator_c"]

    # the runs it requests, executed as the daemon would launch them
    defs = Definitions(assets=ingest_assets, jobs=[ingest_job], sensors=[cdr_drop_sensor], resources=default_resources())
    job = defs.resolve_job_def(ingest_job.name)
    run_ids = []
    for request in tick.run_requests:
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
        assert result.success
        run_ids.append(result.run_id)

    # read back through the instance ...
    assert instance.get_materialized_partitions(AssetKey("mapped_cdrs")) == set(keys)
    records = instance.fetch_materializations(AssetKey("mapped_cdrs"), limit=100).records
    rows = {r.asset_materialization.partition: r.asset_materialization.metadata["dagster/row_count"].value for r in records}
    assert rows == {"2026-11-01|operator_c": 1, "2026-11-02|operator_c": 2}
    for run_id in run_ids:
        assert instance.get_run_by_id(run_id).is_success

    # the warehouse pool got its limit of 1 from docker/dagster.yaml, and every slot was given back
    info = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    assert info.slot_count == 1 and info.active_slot_count == 0

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
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION' AND run_id = ANY(%s)",
            (run_ids,),
        )
        assert cur.fetchone()[0] == 8  # four checks per partition
    assert not list(Path(os.environ["DAGSTER_HOME"]).glob("**/*.db"))


# The sensor as the docker daemon runs it: the daemon's own sensor loop, a code location in a
# gRPC subprocess, runs submitted to the Postgres run queue. 1 s interval so two ticks fit a test.
daemon_defs = Definitions(
    assets=ingest_assets,
    jobs=[ingest_job],
    sensors=[build_cdr_drop_sensor(minimum_interval_seconds=1)],
    resources=default_resources(),
)


def _daemon_tick(instance) -> list:
    import logging

    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    target = ModuleTarget(
        module_name="tests.test_postgres_instance", attribute="daemon_defs", working_directory=str(REPO_ROOT), location_name="voicefw"
    )
    with create_test_daemon_workspace_context(target, instance) as ctx:
        list(execute_sensor_iteration(ctx, logging.getLogger("test_daemon"), None, None))
    return instance.get_runs()


def _reset_cursor(instance) -> None:
    """What `dagster sensor cursor --delete` does: forget where the sensor was."""
    (state,) = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    data = state.instigator_data
    instance.update_instigator_state(
        state.with_data(
            SensorInstigatorData(
                last_tick_timestamp=data.last_tick_timestamp,
                last_run_key=data.last_run_key,
                min_interval=data.min_interval,
                cursor=None,
                last_tick_start_timestamp=data.last_tick_start_timestamp,
                last_sensor_start_timestamp=data.last_sensor_start_timestamp,
                sensor_type=data.sensor_type,
            )
        )
    )


def test_daemon_sensor_queues_runs_in_postgres_and_run_keys_dedup(pg_instance, home):
    instance = pg_instance
    landing = home / "landing" / "operator_c"
    landing.mkdir(parents=True)
    (landing / "a.csv").write_text(HEADER + cdr("a1", "2026-11-03T10:00:00+00:00") + cdr("a2", "2026-11-04T10:00:00+00:00"))

    runs = _daemon_tick(instance)
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["2026-11-03|operator_c", "2026-11-04|operator_c"]
    assert {r.status for r in runs} == {DagsterRunStatus.QUEUED}  # QueuedRunCoordinator: the daemon's queue
    assert {r.job_name for r in runs} == {ingest_job.name}
    ticks = instance.get_ticks(*_sensor_ids(instance))
    assert ticks[0].status == TickStatus.SUCCESS and len(ticks[0].run_ids) == 2

    # cursor lost: the same files give the same run keys, and Dagster starts nothing new
    _reset_cursor(instance)
    time.sleep(1.1)
    assert len(_daemon_tick(instance)) == 2
    ticks = instance.get_ticks(*_sensor_ids(instance))
    assert len(ticks) == 2 and ticks[0].status == TickStatus.SKIPPED
    assert len(ticks[1].run_keys) == 2 and set(ticks[0].run_keys) == set(ticks[1].run_keys)


def _sensor_ids(instance) -> tuple[str, str]:
    (state,) = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return state.instigator_origin_id, state.selector_id
