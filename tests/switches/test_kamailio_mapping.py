"""Real Kamailio output mapped by the shipped operator configs: every call mapped, none lost, each
field equal to what the proxy logged (times to the microsecond)."""

from __future__ import annotations

import shutil
from datetime import date
from decimal import Decimal

import duckdb

from resources.landing import LandingZone
from tests.switches.expect import iso
from voicefw_assets.ingest import map_partition, sync_landing
from voicefw_assets.operators import operator_configs

E164_OF = {"07700900102": "+447700900102", "01632960102": "+441632960102", "anonymous": None}


def map_landed(home, operator: str, files: list) -> tuple[dict, list, int]:
    folder = home / "landing" / operator
    folder.mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)
    config = operator_configs()[operator]
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    sync = sync_landing(con, config, LandingZone())
    reports = [map_partition(con, config, d) for d in sorted(sync.dates_touched)]
    cur = con.execute("SELECT * FROM mapped_cdrs WHERE operator = ?", [operator])
    names = [d[0] for d in cur.description]
    rows = {r[names.index("call_id")]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    rejected = con.execute("SELECT reason, raw_record FROM rejected_cdrs WHERE operator = ?", [operator]).fetchall()
    return rows, rejected, sum(r.raw for r in reports)


def assert_mapped_as_logged(rows: dict, exp: dict) -> None:
    assert sorted(rows) == sorted(exp)  # every call, nothing invented
    for cid, e in exp.items():
        r = rows[cid]
        assert (r["start_time"].isoformat(), r["answer_time"].isoformat() if r["answer_time"] else "",
                r["end_time"].isoformat()) == (iso(e.start), iso(e.answer), iso(e.end)), cid
        assert (r["answered"], r["disposition"], r["sip_code"], r["release_side"]) == (
            e.answered, e.disposition, e.sip_code, e.release_side), cid
        assert abs(Decimal(str(r["ring_s"])) - e.ring_s) < Decimal("0.000002"), cid
        assert abs(Decimal(str(r["duration_s"])) - e.duration_s) < Decimal("0.000002"), cid
        assert (r["a_number_raw"], r["b_number_raw"], r["ingress_trunk"]) == (e.a_number_raw, e.b_number_raw, e.ingress)
        assert r["a_number"] == E164_OF.get(e.a_number_raw, e.a_number_raw), cid
        assert r["b_number"] == E164_OF.get(e.b_number_raw, e.b_number_raw), cid
        assert r["partition_date"] == date.fromisoformat(iso(e.start)[:10])


def test_flatstore_cdrs_map_call_for_call(switch_run, home):
    run, exp = switch_run
    files = run.flatstore_files("acc_cdrs")
    rows, rejected, raw = map_landed(home, "kamailio_flatstore", files)
    assert rejected == [] and raw == len(exp) == sum(len(f.read_text().splitlines()) for f in files)
    assert_mapped_as_logged(rows, exp)


def test_dbtext_cdrs_map_call_for_call(switch_run, home):
    """The same run's db_text table (declaration header, ':' with escapes, newest first), mapped by
    the shipped operator_configs/kamailio_dbtext.yaml."""
    run, exp = switch_run
    table = run.table("acc_cdrs")
    rows, rejected, raw = map_landed(home, "kamailio_dbtext", [table])
    assert rejected == [] and raw == len(exp) == len(table.read_text().splitlines()) - 1  # the declaration line
    assert_mapped_as_logged(rows, exp)
