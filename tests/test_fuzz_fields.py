"""Garbage in every field of every shipped format never fails a run: each line is mapped or
rejected with a reason, and the partition checks pass (no overflow, no cast error, no line lost)."""

from __future__ import annotations

import random

import duckdb
import pytest

from resources.landing import LandingZone
from voicefw_assets.ingest import landed_days, map_partitions, partition_checks, sync_landing
from voicefw_assets.ingest.fields import referenced_columns
from voicefw_assets.operators import operator_configs

GARBAGE = [
    "", " ", "0", "-1", "1.5", "487.0", "487.5", "9" * 30, "-" + "9" * 25, "1e308", "-1e308", "NaN", "inf", "0x1F",
    "2026-11-01 10:00:00", "2026-11-01T10:00:00Z", "2026-02-30 25:61:61", "2026-10-25 01:30:00", "1793491200",
    "1793491200.123456789", "17934912000000", "+447700900123", "00447700900123", "07700900123", "442079460002",
    "sip:+4930123456@gw;user=phone", "anonymous", "ANSWERED", "NO ANSWER", "orig", "\u00e9\u00e8", "\u202etrunk", "a\tb",
    "x" * 300, "SIP/peer-0000001a", "'; DROP TABLE mapped_cdrs; --", "\\", "%7C",
]


def _value(rng: random.Random, quote: bool) -> str:
    v = rng.choice(GARBAGE)
    return '"' + v.replace('"', '""') + '"' if quote or "," in v or '"' in v else v


@pytest.mark.parametrize("operator", ["operator_a", "operator_b", "operator_c"])
def test_garbage_fields_are_rejected_or_flagged_never_fatal(home, operator):
    config = operator_configs()[operator]
    rng = random.Random(operator)
    columns = list(config.csv.columns) or sorted(referenced_columns(config)) + ["extra"]
    lines = [] if not config.csv.header else [",".join(columns)] + ["x"] * config.csv.extra_header_rows
    valid = {  # on odd lines: a call that can be placed (its other fields stay garbage)
        "operator_a": {"start": "2026-11-01 10:00:00", "end": "2026-11-01 10:00:09", "dst": "02079460000", "uniqueid": None,
                       "answer": "", "disposition": "NO ANSWER"},
        "operator_b": {"dateTimeOrigination": "1793527200", "dateTimeDisconnect": "1793527209", "cdrRecordType": "1",
                       "finalCalledPartyNumber": "0301234567", "globalCallID_callId": None, "dateTimeConnect": "0"},
        "operator_c": {"time_start": "2026-11-01T10:00:00Z", "time_end": "2026-11-01T10:00:09Z", "dst_number": "4930123456",
                       "call_id": None, "time_connect": ""},
    }[operator]
    for i in range(600):
        vals = [_value(rng, operator == "operator_a") for _ in columns]
        if i % 2:  # half the lines can be placed, so the other garbage reaches the field-level rules
            for col, v in valid.items():
                vals[columns.index(col)] = f"fz{i}" if v is None else v
        lines.append(",".join(vals))
    folder = home / "landing" / operator
    folder.mkdir(parents=True)
    name = {"operator_a": "Master.csv", "operator_b": "cdr_fuzz.csv", "operator_c": "fuzz.csv"}[operator]
    (folder / name).write_text("\n".join(lines) + "\n")
    con = duckdb.connect(str(home / "w.duckdb"))
    report = sync_landing(con, config, LandingZone())
    assert not report.quarantined, report.quarantined
    days = landed_days(con, operator)
    reports = map_partitions(con, config, days)
    assert sum(r.lines for r in reports.values()) == 600 == sum(r.mapped + r.rejected for r in reports.values())
    for checks in partition_checks(con, operator, days).values():
        assert all(c.passed for c in checks.values()), {k: v.metadata for k, v in checks.items() if not v.passed}
    reasons = {k: n for r in reports.values() for k, n in r.reasons.items()}
    assert sum(r.mapped for r in reports.values()) > 20, reasons
