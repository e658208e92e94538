"""The contract has one declaration (pandera) and is checked in SQL: both fail on the same bad rows."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pandas as pd
import pandera.errors
import pytest

from voicefw_assets.contracts import MAPPED_COLUMNS, MappedCdrContract, contract_rules_sql, contract_violations_sql

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
GOOD = dict(operator="operator_c", call_id="c1", partition_date=T0.date(), start_time=T0, answer_time=None,
            end_time=T0.replace(second=5), a_number="+447700900123", a_number_raw="447700900123", b_number="+4930123456",
            b_number_raw="4930123456", ingress_trunk="gw", egress_trunk=None, answered=False, disposition="no_answer",
            sip_code=480, q850_cause=18, release_side="caller", duration_s=0.0, ring_s=5.0, source_file="f.csv",
            source_line=2, quality_flags=None)
BAD = {  # one broken rule per row, each a way the mapping could go wrong
    "a_number_str_matches": dict(a_number="+4412"),
    "b_number_str_matches": dict(b_number="4930123456"),
    "callee_number_or_flag": dict(b_number=None),
    "disposition_isin": dict(disposition="ringing"),
    "sip_code_less_than_or_equal_to": dict(sip_code=999),
    "q850_cause_less_than_or_equal_to": dict(q850_cause=487),
    "release_side_isin": dict(release_side="nobody"),
    "duration_s_greater_than_or_equal_to": dict(duration_s=-1.0, answered=True, answer_time=T0, disposition="answered"),
    "end_not_before_start": dict(end_time=T0.replace(hour=9)),
    "answered_iff_answer_time": dict(answered=True, duration_s=0.0),
    "unanswered_bill_nothing": dict(duration_s=3.0),
    "source_line_greater_than_or_equal_to": dict(source_line=0),
}


def _table(con, rows: list[dict]) -> None:
    con.execute(f"CREATE OR REPLACE TABLE t ({', '.join(f'{c} {ty}' for c, ty in MAPPED_COLUMNS.items()).replace(' NOT NULL', '')})")
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in MAPPED_COLUMNS)})", [[r[c] for c in MAPPED_COLUMNS] for r in rows])


@pytest.mark.parametrize("rule", sorted(BAD))
def test_pandera_and_sql_fail_on_the_same_bad_row(rule):
    row = GOOD | BAD[rule]
    con = duckdb.connect()
    _table(con, [GOOD, row])
    cur = con.execute(contract_violations_sql("t"))
    counts = dict(zip([d[0] for d in cur.description], cur.fetchall()[0]))
    assert counts[rule] == 1 and sum(v for k, v in counts.items() if k not in ("partition_date", "rows")) == 1, counts
    frame = pd.DataFrame([GOOD, row])
    MappedCdrContract.validate(pd.DataFrame([GOOD]))  # the good row passes pandera too
    with pytest.raises(pandera.errors.SchemaError):
        MappedCdrContract.validate(frame)


def test_a_flagged_row_without_callee_number_passes():
    con = duckdb.connect()
    _table(con, [GOOD | dict(b_number=None, quality_flags=["b_number_invalid"])])
    cur = con.execute(contract_violations_sql("t"))
    counts = dict(zip([d[0] for d in cur.description], cur.fetchall()[0]))
    assert not any(v for k, v in counts.items() if k not in ("partition_date", "rows"))
    assert set(contract_rules_sql()) >= set(BAD)


def test_partition_checks_fail_when_a_line_goes_missing_or_a_row_breaks_the_contract(home):
    """The checks are not vacuous: a staged row lost after registration, a duplicate call_id and a
    non-E.164 number each fail their check (on tables tampered with after a clean mapping)."""
    from datetime import date

    from resources.landing import LandingZone
    from tests.test_mapping import asterisk_row, land
    from voicefw_assets.ingest import map_partitions, partition_checks, sync_landing
    from voicefw_assets.operators import operator_configs

    rows = "".join(asterisk_row(f"k{i}", "07700900123", "02079460000", f"2026-11-01 09:0{i}:00", "",
                                f"2026-11-01 09:0{i}:05", "5", "0", "NO ANSWER") for i in range(3))
    land(home, "operator_a", "Master.csv", rows)
    con = duckdb.connect(str(home / "w.duckdb"))
    config, day = operator_configs()["operator_a"], date(2026, 11, 1)
    sync_landing(con, config, LandingZone())
    map_partitions(con, config, [day])

    def failed() -> set[str]:
        return {k for k, v in partition_checks(con, "operator_a", [day])[day].items() if not v.passed}

    assert failed() == set()
    con.execute("UPDATE mapped_cdrs SET a_number = '+4412' WHERE call_id = 'k0'")
    assert failed() == {"canonical_contract"}
    con.execute("UPDATE mapped_cdrs SET call_id = 'k2' WHERE call_id = 'k1'")
    assert "unique_call_id" in failed()
    con.execute("DELETE FROM ingest_rows WHERE call_id = 'k2' AND source_line = 3")
    map_partitions(con, config, [day])  # a line lost between the bytes and the rows can never reconcile
    assert failed() == {"rows_reconcile"}
