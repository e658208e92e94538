"""`voicefw materialize` as a new user runs it, then what `voicefw up` would do next.

One CLI run over simulated drops with a quality gate that cannot pass: one ingest run for every
operator-day, per-partition check results, a failed gate said in one line (no stack trace), scores
not attempted without any model; then the drop sensor and the automation find nothing to do, and
every partition of the data's days shows as materialized.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, build_sensor_context, evaluate_automation_conditions
from dagster import AssetPartitionStatus

from resources import default_resources
from sensors import cdr_drop_sensor
from voicefw_assets.partitions import cdr_partitions, daily_partitions
from voicefw_assets.settings import REPO_ROOT
from voicefw_assets.simulate import simulate

from tests.test_ingest_dagster import HEADER_C, c_rows
from tests.test_mapping import land

VOICEFW = str(REPO_ROOT / ".venv" / "bin" / "voicefw")


@pytest.mark.timeout(400)
def test_materialize_then_nothing_left_to_do(home, tmp_path, monkeypatch):
    simulate(home, days=3, calls_per_day=1500, seed=9)
    # a fourth day that only operator_c sent calls for: the other operators' 2026-11-04 are 0-row
    # materializations ("nothing landed"), not grey gaps in the UI's operator x day grid
    land(home, "operator_c", "late_20261104.csv", HEADER_C + c_rows("2026-11-04", 50, "late"))
    gate = tmp_path / "model_config.yaml"
    gate.write_text("gates: {min_pr_auc: 1.01}\n")  # no candidate can pass this
    monkeypatch.setenv("VOICEFW_MODEL_CONFIG", str(gate))

    out = subprocess.run([VOICEFW, "materialize"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert out.returncode == (1 if any(" failed: " in l or "-> not run" in l for l in lines) else 0), text
    assert any("raw_cdrs,mapped_cdrs,rejected_cdrs 2026-11-01|operator_a...2026-11-04|operator_c (12 partitions) -> ok" in l for l in lines), text
    # the gate's verdict in one line with its reasons (a blocking failure, or a warning when the old model serves on)
    gate_lines = [l for l in lines if "check flash_call_model:quality_gate" in l]
    assert len(gate_lines) == 1 and ("failed: " in gate_lines[0] or "warns: " in gate_lines[0]) and "1.01" in gate_lines[0], text
    assert "Traceback" not in text and "DagsterAssetCheckFailedError" not in text, text
    assert sum(" -> " in l for l in lines) == 11  # ingest 1, features 4, model 1, scores 4, feed checks 1
    assert "runs in" in lines[-2] and "quarantined" in text

    instance = DagsterInstance.get()
    days = instance.get_dynamic_partitions(daily_partitions.name)
    assert days == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]  # the data's days, nothing else
    keys = cdr_partitions.get_partition_keys(dynamic_partitions_store=instance)
    assert len(keys) == 12  # the operators that sent files (not every configured one) x the data's days
    for asset, pdef, partition_keys in (("mapped_cdrs", cdr_partitions, keys), ("call_features", daily_partitions, days)):
        status = instance.get_status_by_partition(AssetKey(asset), partition_keys=partition_keys, partitions_def=pdef)
        assert set(status.values()) == {AssetPartitionStatus.MATERIALIZED} and len(status) == len(partition_keys), (asset, status)
    record = instance.get_latest_asset_check_evaluation_record(AssetCheckKey(AssetKey("mapped_cdrs"), "rows_reconcile"))
    assert record.event.dagster_event.asset_check_evaluation_data.partition in keys  # not "Partition —"

    # what `voicefw up` would start next: its drop sensor and the automation, from fresh cursors
    tick = cdr_drop_sensor(build_sensor_context(instance=instance, resources=default_resources()))
    assert not tick.run_requests and "already ingested" in tick.skip_reason.skip_message
    from voicefw_assets.definitions import defs

    assert evaluate_automation_conditions(defs=defs, instance=instance).total_requested == 0
    assert os.environ["DAGSTER_HOME"] in out.stdout  # says which instance it used
