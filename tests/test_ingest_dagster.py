"""The ingest assets as Dagster runs: one run for many operator-days with per-partition
materializations and checks, idempotency, concurrent runs, a fourth operator by YAML only."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, materialize

from resources import default_resources
from voicefw_assets.assets.ingest import ingest_assets
from voicefw_assets.partitions import add_data_partitions, range_tags
from voicefw_assets.settings import REPO_ROOT

from tests.test_mapping import asterisk_row, land

HEADER_C = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\n"


def c_rows(day: str, n: int, prefix: str) -> str:
    return "".join(
        f"{prefix}{i},{day}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z,,{day}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.900Z,"
        f"44770090{i:04d},4930123{i:04d},gw-a,gw-b,100,900,487,x,16,orig,0\n"
        for i in range(n)
    )


def run_ingest(operators: list[str], days: list[str]):
    """One run over the operator x day rectangle, as `voicefw materialize` and a UI backfill launch it."""
    instance = DagsterInstance.get()
    add_data_partitions(instance, operators, days)
    return materialize(ingest_assets, tags=range_tags(operators, days), resources=default_resources(), instance=instance)


def test_one_run_maps_many_days_with_per_partition_materializations_and_checks(home):
    land(home, "operator_c", "a.csv", HEADER_C + c_rows("2026-11-02", 50, "x") + "broken,line\n" + c_rows("2026-11-03", 20, "y"))
    days = ["2026-11-02", "2026-11-03"]
    keys = [f"{d}|operator_c" for d in days]
    for _ in range(2):  # the second run rebuilds the partitions and must find the same rows
        result = run_ingest(["operator_c"], days)
        assert result.success
        checks = {(c.check_name, c.partition): c.passed for c in result.get_asset_check_evaluations()}
        names = ("rows_reconcile", "unique_call_id", "times_inside_partition", "canonical_contract")
        assert checks == {(n, k): True for n in names for k in keys}  # each check once per partition, with it
        meta = {
            (m.asset_key.to_user_string(), m.partition): {k: v.value for k, v in m.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()
        }
        assert len(meta) == 6 == len(result.get_asset_materialization_events())  # 3 assets x 2 days, no duplicates
        # the malformed line belongs to the file's first day, where it is rejected
        assert [meta[("raw_cdrs", k)]["dagster/row_count"] for k in keys] == [51, 20]
        assert [meta[("mapped_cdrs", k)]["dagster/row_count"] for k in keys] == [50, 20]
        assert [meta[("rejected_cdrs", k)]["dagster/row_count"] for k in keys] == [1, 0]
    instance = DagsterInstance.get()
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("mapped_cdrs")), limit=10).records
    assert sorted(r.partition_key for r in records) == sorted(keys * 2)
    assert len({r.run_id for r in records}) == 2  # two runs, each covering both days


def test_two_concurrent_runs_on_different_partitions_both_succeed(home):
    land(home, "operator_c", "d1.csv", HEADER_C + c_rows("2026-11-01", 5000, "p"))
    land(home, "operator_c", "d2.csv", HEADER_C + c_rows("2026-11-02", 5000, "q"))
    env = {**os.environ}
    add_data_partitions(DagsterInstance.get(), ["operator_c"], ["2026-11-01", "2026-11-02"])  # an instance that knows them
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "voicefw_assets.definitions",
             "--select", "raw_cdrs,mapped_cdrs,rejected_cdrs", "--partition", f"{day}|operator_c"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for day in ("2026-11-01", "2026-11-02")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    runs = DagsterInstance.get().get_runs()
    assert len(runs) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    counts = dict(con.execute("SELECT partition_date::VARCHAR, count(*) FROM mapped_cdrs GROUP BY 1").fetchall())
    assert counts == {"2026-11-01": 5000, "2026-11-02": 5000}


FOURTH = """
# A PBX that exports semicolon-separated CSV with a header, local Paris time, ms durations.
csv: {header: true, delimiter: ";"}
timezone: Europe/Paris
numbers: {country_code: "33", national_prefix: "0", international_prefix: "00"}
fields:
  call_id: id
  start_time: {column: debut, time: "%d/%m/%Y %H:%M:%S"}
  answer_time: {column: reponse, time: "%d/%m/%Y %H:%M:%S"}
  end_time: {column: fin, time: "%d/%m/%Y %H:%M:%S"}
  a_number: appelant
  b_number: appele
  ingress_trunk: trunk
  disposition: {column: statut, map: {OK: answered, NR: no_answer, OCC: busy, ANN: cancelled}, default: failed}
  release_side: {column: raccroche, map: {A: caller, B: callee}, default: unknown}
  duration_s: {column: duree_ms, unit: ms}
"""


def test_a_fourth_operator_is_one_yaml_file(home, tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "operator_configs", configs)
    (configs / "operator_d.yaml").write_text(FOURTH)
    land(
        home,
        "operator_d",
        "export.csv",
        "id;debut;reponse;fin;appelant;appele;trunk;statut;raccroche;duree_ms\n"
        "d1;02/11/2026 00:30:00;;02/11/2026 00:30:02;06 12 34 56 78;01 23 45 67 89;FR-1;ANN;A;0\n"
        "d2;02/11/2026 10:00:00;02/11/2026 10:00:05;02/11/2026 10:01:05;+33612345679;0033123456780;FR-1;OK;B;60000\n",
    )
    env = {**os.environ, "VOICEFW_OPERATOR_CONFIGS": str(configs)}
    for _ in range(2):  # the second time the partitions come from the manifest, not a scan
        out = subprocess.run(
            [sys.executable, "-m", "voicefw_assets.cli", "materialize", "--select", "raw_cdrs,mapped_cdrs,rejected_cdrs"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "2026-11-01|operator_d...2026-11-02|operator_d (2 partitions) -> ok" in out.stdout, out.stdout
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT call_id, start_time, a_number, b_number, disposition, release_side, duration_s FROM mapped_cdrs WHERE operator='operator_d' ORDER BY 1"
    ).fetchall()
    assert [(r[0], r[1].isoformat(), r[2], r[3], r[4], r[5], r[6]) for r in rows] == [
        ("d1", "2026-11-01T23:30:00+00:00", "+33612345678", "+33123456789", "cancelled", "caller", 0.0),
        ("d2", "2026-11-02T09:00:00+00:00", "+33612345679", "+33123456780", "answered", "callee", 60.0),
    ]
