"""Hand-written files in the three formats, mapped by the YAML configs, compared with hand-computed rows."""

import gzip
import os
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import phonenumbers
import pytest

from resources.landing import LandingZone
from voicefw_assets.ingest import e164_sql, map_partition, peek_file_dates, sync_landing
from voicefw_assets.ingest.numbers import ensure_e164_table
from voicefw_assets.operators import ConfigError, NumberPlan, load_operator_config, operator_configs


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def land(home: Path, operator: str, name: str, text: str, gz: bool = False) -> Path:
    folder = home / "landing" / operator
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def run(home: Path, operator: str, *days: date, config=None):
    config = config or operator_configs()[operator]
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("SET TimeZone='UTC'")
    sync = sync_landing(con, config, LandingZone())
    reports = {d: map_partition(con, config, d) for d in days}
    return con, sync, reports


def mapped(con, operator):
    cur = con.execute("SELECT * FROM mapped_cdrs WHERE operator = ? ORDER BY call_id", [operator])
    names = [d[0] for d in cur.description]
    return {r[1]: dict(zip(names, r)) for r in cur.fetchall()}


def asterisk_row(uid, src, dst, start, answer, end, dur, bill, disp, chan="SIP/bt-in-0000001a", dchan=""):
    vals = ["", src, dst, "from-trunk", f'""Caller"" <{src}>', chan, dchan, "Dial", "", start, answer, end, dur, bill, disp, "3", uid, ""]
    return ",".join(f'"{v}"' for v in vals) + "\n"


def test_operator_a_local_time_across_dst_and_uk_numbers(home):
    text = (
        # spring forward 2026-03-29 01:00 GMT -> 02:00 BST
        asterisk_row("1.1", "07700900123", "02079460000", "2026-03-29 00:30:00", "", "2026-03-29 00:30:02", "2", "0", "NO ANSWER")
        + asterisk_row("1.2", "+447700900124", "0161 496 0000", "2026-03-29 02:30:00", "2026-03-29 02:30:04", "2026-03-29 02:31:04", "64", "60", "ANSWERED", dchan="SIP/carrier-x-0000002b")
        # autumn: 00:30 BST on 25 Oct is still 24 Oct in UTC; 03:00 is GMT again
        + asterisk_row("2.1", "00493012345678", "020-7946-0001", "2026-10-25 00:30:00", "", "2026-10-25 00:30:01", "1", "0", "NO ANSWER")
        + asterisk_row("2.2", "anonymous", "07700 900 125", "2026-10-25 03:00:00", "", "2026-10-25 03:00:05", "5", "0", "BUSY")
        + asterisk_row("2.3", "07700900126", "07700900127", "2026-10-25 04:00:00", "", "2026-10-25 04:00:30", "30", "0", "CONGESTION")
    )
    land(home, "operator_a", "Master.csv", text)
    con, sync, rep = run(home, "operator_a", date(2026, 3, 29), date(2026, 10, 24), date(2026, 10, 25))
    assert sync.dates_touched == {date(2026, 3, 29), date(2026, 10, 24), date(2026, 10, 25)}
    rows = mapped(con, "operator_a")
    assert rows["1.1"]["start_time"] == utc(2026, 3, 29, 0, 30)
    assert rows["1.2"]["start_time"] == utc(2026, 3, 29, 1, 30)
    assert rows["1.2"]["answer_time"] == utc(2026, 3, 29, 1, 30, 4)
    assert rows["1.2"]["ring_s"] == 4 and rows["1.2"]["duration_s"] == 60 and rows["1.2"]["answered"]
    assert rows["1.2"]["egress_trunk"] == "carrier-x" and rows["1.2"]["ingress_trunk"] == "bt-in"
    assert rows["2.1"]["start_time"] == utc(2026, 10, 24, 23, 30) and rows["2.1"]["partition_date"] == date(2026, 10, 24)
    assert rows["2.2"]["start_time"] == utc(2026, 10, 25, 3, 0)
    assert rows["1.1"]["a_number"] == "+447700900123" and rows["1.1"]["b_number"] == "+442079460000"
    assert rows["1.2"]["b_number"] == "+441614960000"
    assert rows["2.1"]["a_number"] == "+493012345678" and rows["2.1"]["b_number"] == "+442079460001"
    assert rows["2.2"]["a_number"] is None and rows["2.2"]["a_number_raw"] == "anonymous"
    assert rows["2.2"]["disposition"] == "busy" and rows["2.3"]["disposition"] == "failed"
    assert rows["1.1"]["disposition"] == "no_answer" and rows["1.1"]["ring_s"] == 2 and rows["1.1"]["duration_s"] == 0
    assert rows["1.1"]["release_side"] == "unknown"
    assert [rows[k]["source_line"] for k in ("1.1", "1.2", "2.1", "2.2", "2.3")] == [1, 2, 3, 4, 5]
    assert sum(r.rejected for r in rep.values()) == 0


CUCM_COLS = [
    "cdrRecordType", "globalCallID_callManagerId", "globalCallID_callId", "origLegCallIdentifier",
    "dateTimeOrigination", "callingPartyNumber", "originalCalledPartyNumber", "finalCalledPartyNumber",
    "origCause_value", "destCause_value", "dateTimeConnect", "dateTimeDisconnect", "duration",
    "origDeviceName", "destDeviceName", "origIpAddr",
]


def cucm(rows: list[dict], order: list[str]) -> str:
    types = ["INTEGER" if c not in ("callingPartyNumber", "origDeviceName") else "VARCHAR(50)" for c in order]
    lines = [",".join(f'"{c}"' for c in order), ",".join(types)]
    lines += [",".join(str(r.get(c, "")) for c in order) for r in rows]
    return "\n".join(lines) + "\n"


def test_operator_b_cucm_by_name_with_type_row_causes_and_rejects(home):
    base = dict(cdrRecordType=1, globalCallID_callManagerId=1, origLegCallIdentifier=9, origDeviceName="DE-GW-1", destDeviceName="SBC-2")
    rows = [
        # caller hangs up while ringing: cancelled, released by caller, 2 s ring
        base | dict(globalCallID_callId=101, dateTimeOrigination=1793491200, callingPartyNumber="015112345678",
                    originalCalledPartyNumber="0301234567", origCause_value=16, destCause_value=0,
                    dateTimeConnect=0, dateTimeDisconnect=1793491202, duration=0),
        # answered, callee hangs up after 90 s
        base | dict(globalCallID_callId=102, dateTimeOrigination=1793491260, callingPartyNumber="+4915112345679",
                    originalCalledPartyNumber="", finalCalledPartyNumber="0049 30 1234568", origCause_value=0, destCause_value=16,
                    dateTimeConnect=1793491265, dateTimeDisconnect=1793491355, duration=90),
        # busy
        base | dict(globalCallID_callId=103, dateTimeOrigination=1793491300, callingPartyNumber="03099999999",
                    originalCalledPartyNumber="0301234569", origCause_value=0, destCause_value=17,
                    dateTimeConnect=0, dateTimeDisconnect=1793491301, duration=0),
        # a CMR row, not a CDR
        base | dict(cdrRecordType=2, globalCallID_callId=104, dateTimeOrigination=1793491300, callingPartyNumber="03099999999",
                    originalCalledPartyNumber="0301234569", dateTimeConnect=0, dateTimeDisconnect=1793491301, duration=0),
    ]
    order = list(reversed(CUCM_COLS))  # any column order: mapping is by name
    land(home, "operator_b", "cdr_StandAloneCluster_01.csv", cucm(rows, order))
    day = date(2026, 11, 1)  # 1793491200 = 2026-11-01T00:00:00Z
    con, _, rep = run(home, "operator_b", day)
    m = mapped(con, "operator_b")
    assert set(m) == {"101", "102", "103"}
    assert m["101"]["start_time"] == utc(2026, 11, 1) and m["101"]["answer_time"] is None
    assert m["101"]["disposition"] == "cancelled" and m["101"]["release_side"] == "caller" and m["101"]["ring_s"] == 2
    assert m["101"]["q850_cause"] == 16 and m["101"]["a_number"] == "+4915112345678" and m["101"]["b_number"] == "+49301234567"
    assert m["101"]["ingress_trunk"] == "DE-GW-1" and m["101"]["egress_trunk"] == "SBC-2"
    assert m["102"]["disposition"] == "answered" and m["102"]["release_side"] == "callee" and m["102"]["duration_s"] == 90
    assert m["102"]["ring_s"] == 5 and m["102"]["b_number"] == "+49301234568"
    assert m["103"]["disposition"] == "busy" and m["103"]["q850_cause"] == 17
    assert [m[k]["source_line"] for k in ("101", "102", "103")] == [3, 4, 5]  # header + type row come first
    rej = con.execute("SELECT source_line, reason FROM rejected_cdrs").fetchall()
    assert rej == [(6, "not an end-of-call CDR (cdrRecordType is not 1)")]
    assert rep[day].raw == 4 == rep[day].mapped + rep[day].rejected


def test_operator_c_iso_offsets_ms_units_gzip_and_malformed_lines(home):
    header = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\n"
    body = (
        "c1,2026-11-01T23:59:59.500-05:00,,2026-11-02T00:00:01.250-05:00,447700900123,004930123456,gw-lon,gw-fra,800,1750,487,Request Terminated,16,orig,0\n"
        "c2,2026-11-02T06:00:00Z,2026-11-02T06:00:03Z,2026-11-02T06:02:03Z,0033612345678,4915112345678,gw-par,gw-fra,500,3000,200,OK,16,term,120\n"
        'c3,"2026-11-02T07:00:00+01:00",,2026-11-02T07:00:10+01:00,12,4915112345678,gw-par,gw-fra,500,10000,480,"Temporarily, Unavailable",18,switch,0\n'
        "c4,this is,a,broken,line\n"
        "c5,2026-11-02T08:00:00+00:00,,2026-11-02T08:00:01+00:00,,4915112345678,gw-par,gw-fra,500,1000,999,Weird,16,orig,0\n"
    )
    land(home, "operator_c", "switch_20261102.csv.gz", header + body, gz=True)
    day = date(2026, 11, 2)
    con, _, rep = run(home, "operator_c", day)
    m = mapped(con, "operator_c")
    assert set(m) == {"c1", "c2", "c3", "c5"}  # a bad caller number or SIP code is field-level: NULL + flag
    assert m["c1"]["start_time"] == utc(2026, 11, 2, 4, 59, 59, 500000)
    assert m["c1"]["end_time"] == utc(2026, 11, 2, 5, 0, 1, 250000)
    assert m["c1"]["ring_s"] == 1.75 and m["c1"]["disposition"] == "cancelled" and m["c1"]["release_side"] == "caller"
    assert m["c1"]["a_number"] == "+447700900123" and m["c1"]["b_number"] == "+4930123456" and m["c1"]["sip_code"] == 487
    assert m["c2"]["answered"] and m["c2"]["duration_s"] == 120 and m["c2"]["release_side"] == "callee"
    assert m["c2"]["a_number"] == "+33612345678"
    assert m["c3"]["a_number"] is None and m["c3"]["a_number_raw"] == "12" and m["c3"]["quality_flags"] == ["a_number_invalid"]
    assert m["c5"]["sip_code"] is None and m["c5"]["quality_flags"] == ["sip_code_invalid"] and m["c5"]["a_number"] is None
    assert m["c1"]["quality_flags"] is None
    reasons = dict(con.execute("SELECT source_line, reason FROM rejected_cdrs ORDER BY 1").fetchall())
    assert reasons == {5: "wrong number of fields: expected 15, found 5"}
    assert rep[day].raw == 5 and rep[day].mapped + rep[day].rejected == 5
    assert rep[day].flags == {"a_number_invalid": 1, "sip_code_invalid": 1}


def test_unreadable_and_duplicate_files_are_quarantined_with_a_reason(home):
    header = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\n"
    row = "c1,2026-11-02T06:00:00Z,,2026-11-02T06:00:02Z,447700900123,4930123456,a,b,1,2000,487,x,16,orig,0\n"
    land(home, "operator_c", "good.csv", header + row)
    land(home, "operator_c", "copy_of_good.csv", header + row)
    trunc = gzip.compress((header + row * 2000).encode())
    (home / "landing" / "operator_c" / "cut.csv.gz").write_bytes(trunc[: len(trunc) // 2])
    land(home, "operator_c", "notes.txt", "hello")
    land(home, "operator_c", "empty.csv", "")
    land(home, "operator_c", "header_only.csv", header)
    con, sync, rep = run(home, "operator_c", date(2026, 11, 2))
    q = home / "quarantine" / "operator_c"
    names = sorted(p.name for p in q.iterdir())
    assert "cut.csv.gz" in names and "cut.csv.gz.reason.json" in names and "notes.txt" in names
    dup = [n for n in names if n.endswith(".csv") and "good" in n]
    assert len(dup) == 1  # one of the two identical files is loaded, the other quarantined as a duplicate
    assert any("duplicate" in r for r in sync.quarantined.values())
    assert rep[date(2026, 11, 2)].mapped == 1
    assert not (home / "landing" / "operator_c" / "cut.csv.gz").exists()
    statuses = dict(con.execute("SELECT regexp_extract(path, '[^/]+$'), status FROM landing_files").fetchall())
    assert statuses["empty.csv"] == "empty" and statuses["header_only.csv"] == "empty"
    # a second sync changes nothing: same files, same sizes, same mtimes
    again = sync_landing(con, operator_configs()["operator_c"], LandingZone())
    assert not again.loaded and not again.quarantined


def test_changed_file_replaces_its_rows_and_redrop_changes_nothing(home):
    header = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\n"
    row = "c{},2026-11-02T06:00:0{}Z,,2026-11-02T06:00:09Z,447700900123,4930123456,a,b,1,2000,487,x,16,orig,0\n"
    path = land(home, "operator_c", "f.csv", header + row.format(1, 1))
    con, _, rep = run(home, "operator_c", date(2026, 11, 2))
    assert rep[date(2026, 11, 2)].mapped == 1
    con.close()
    path.write_text(header + row.format(1, 1) + row.format(2, 2))
    con, sync, rep = run(home, "operator_c", date(2026, 11, 2))
    assert list(sync.loaded.values()) == [2] and rep[date(2026, 11, 2)].mapped == 2
    assert con.execute("SELECT count(*) FROM raw.operator_c").fetchone()[0] == 2
    os.utime(path)  # touched, same bytes
    again = sync_landing(con, operator_configs()["operator_c"], LandingZone())
    assert not again.loaded and again.unchanged == 1


def test_peek_file_dates_reads_the_days_a_file_spans(home):
    text = asterisk_row("1", "07700900123", "02079460000", "2026-10-25 00:30:00", "", "2026-10-25 00:30:02", "2", "0", "NO ANSWER")
    text += asterisk_row("2", "07700900123", "02079460000", "2026-10-25 09:30:00", "", "2026-10-25 09:30:02", "2", "0", "NO ANSWER")
    path = land(home, "operator_a", "m.csv", text)
    assert peek_file_dates(operator_configs()["operator_a"], path) == {date(2026, 10, 24), date(2026, 10, 25)}


@pytest.mark.parametrize(
    "plan,region,numbers",
    [
        (
            NumberPlan(country_code="44"),
            "GB",
            ["07700900123", "020 7946 0000", "+44 20 7946 0000", "0044 161 496 0000", "+44 (0)20 7946 0001",
             "01632 960 001", "+1 212 555 0100", "0033 6 12 34 56 78", "tel:+447700900123", "sip:+4930123456@gw;user=phone"],
        ),
        (
            NumberPlan(country_code="49"),
            "DE",
            ["0301234567", "0151 12345678", "+49 30 1234567", "0049 89 12345678", "030-1234567-0", "+33 6 12 34 56 78"],
        ),
    ],
)
def test_sql_e164_agrees_with_phonenumbers(plan, region, numbers):
    con = duckdb.connect()
    ensure_e164_table(con)
    got = [r[0] for r in con.execute(f"SELECT {e164_sql('x', plan)} FROM unnest(?) AS t(x)", [numbers]).fetchall()]
    want = []
    for n in numbers:
        cleaned = n.removeprefix("tel:").removeprefix("sip:").split("@")[0]
        want.append(phonenumbers.format_number(phonenumbers.parse(cleaned, region), phonenumbers.PhoneNumberFormat.E164))
    assert got == want


def test_bare_international_numbers_and_garbage():
    plan = NumberPlan(national_prefix="", international_prefix="00", unprefixed="international")
    con = duckdb.connect()
    ensure_e164_table(con)
    nums = ["447700900123", "00447700900123", "+1 (212) 555-0100", "12", "abc", "", None, "0447700900123"]
    got = [r[0] for r in con.execute(f"SELECT {e164_sql('x', plan)} FROM unnest(?) AS t(x)", [nums]).fetchall()]
    assert got == ["+447700900123", "+447700900123", "+12125550100", None, None, None, None, None]


def test_a_bad_config_names_the_file_and_the_problem(tmp_path):
    bad = tmp_path / "op_x.yaml"
    bad.write_text("csv: {header: false}\nnumbers: {country_code: '44'}\nfields: {call_id: x}\n")
    with pytest.raises(ConfigError, match=r"(?s)op_x.yaml.*headerless dialect must list its `columns`"):
        load_operator_config(bad)


def test_operator_a_hour_repeated_when_clocks_go_back(home):
    """25 Oct 2026: 01:00-02:00 happens twice in London. Asterisk's `duration` (end - start)
    settles which occurrence a start or end means; with no such hint the first one is taken."""
    rows = (
        # true start 00:50Z (01:50 BST), end 01:10Z (01:10 GMT): end is the second occurrence
        asterisk_row("r1", "07700900123", "02079460000", "2026-10-25 01:50:00", "", "2026-10-25 01:10:00", "1200", "0", "NO ANSWER")
        # true start 00:59:30Z (01:59:30 BST), end 01:00:30Z (01:00:30 GMT)
        + asterisk_row("r2", "07700900123", "02079460000", "2026-10-25 01:59:30", "", "2026-10-25 01:00:30", "60", "0", "NO ANSWER")
        # true start 01:20Z (01:20 GMT, second occurrence), end 02:30Z (unambiguous), 70 min
        + asterisk_row("r3", "07700900123", "02079460000", "2026-10-25 01:20:00", "2026-10-25 01:20:10", "2026-10-25 02:30:00", "4200", "4190", "ANSWERED")
        # both in the repeated hour and consistent either way: the first occurrence (BST)
        + asterisk_row("r4", "07700900123", "02079460000", "2026-10-25 01:30:00", "", "2026-10-25 01:31:00", "60", "0", "NO ANSWER")
    )
    land(home, "operator_a", "Master.csv", rows)
    con, _, rep = run(home, "operator_a", date(2026, 10, 25))
    m = mapped(con, "operator_a")
    assert (m["r1"]["start_time"], m["r1"]["end_time"]) == (utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 1, 10))
    assert (m["r2"]["start_time"], m["r2"]["end_time"]) == (utc(2026, 10, 25, 0, 59, 30), utc(2026, 10, 25, 1, 0, 30))
    assert (m["r3"]["start_time"], m["r3"]["answer_time"], m["r3"]["end_time"]) == (
        utc(2026, 10, 25, 1, 20), utc(2026, 10, 25, 1, 20, 10), utc(2026, 10, 25, 2, 30))
    assert (m["r4"]["start_time"], m["r4"]["end_time"]) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 31))
    assert rep[date(2026, 10, 25)].rejected == 0


def test_windows_exports_with_bom_and_crlf_map(home):
    header = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\r\n"
    row = "w1,2026-11-02T06:00:00Z,,2026-11-02T06:00:02Z,447700900123,4930123456,a,b,1,2000,487,x,16,orig,0\r\n"
    path = home / "landing" / "operator_c" / "excel.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbf" + (header + row).encode())
    con, sync, rep = run(home, "operator_c", date(2026, 11, 2))
    assert not sync.quarantined and rep[date(2026, 11, 2)].mapped == 1
    assert mapped(con, "operator_c")["w1"]["source_line"] == 2


def test_paths_with_quotes_and_spaces_work_end_to_end(tmp_path, monkeypatch):
    """VOICEFW_HOME=/srv/o'brien: every path reaches SQL as a parameter or a quoted literal."""
    home = tmp_path / "o'brien \"x\" ; drop"
    home.mkdir()
    monkeypatch.setenv("VOICEFW_HOME", str(home))
    monkeypatch.setenv("VOICEFW_SETTLE_S", "0")
    text = asterisk_row("q1", "07700900123", "02079460000", "2026-11-01 09:00:00", "", "2026-11-01 09:00:05", "5", "0", "NO ANSWER")
    land(home, "operator_a", "it's.csv", text)
    from voicefw_assets.ingest import partition_checks, survey_landing

    assert [d.action for d in survey_landing(LandingZone(), operator_configs()).decisions] == ["ingest"]
    con, sync, rep = run(home, "operator_a", date(2026, 11, 1))
    assert rep[date(2026, 11, 1)].mapped == 1 and mapped(con, "operator_a")["q1"]["source_file"].endswith("it's.csv")
    assert all(c.passed for c in partition_checks(con, "operator_a", [date(2026, 11, 1)])[date(2026, 11, 1)].values())


def test_numbers_written_with_a_bare_country_code_and_misplaced_cause_codes(home):
    """Hand-computed rows: a UK switch writing 442079460002 means +442079460002 (not +44442079460002);
    an impossible UK length is no number (NULL + flag, row kept); a SIP code in the Q.850 column of a
    wholesale export (487) keeps the row with the cause NULL + flag; ms ring timers are seconds."""
    text = (
        asterisk_row("n1", "442079460002", "447700900123", "2026-11-03 09:00:00", "", "2026-11-03 09:00:04", "4", "0", "NO ANSWER")
        + asterisk_row("n2", "033005122192", "0044 7700 900124", "2026-11-03 09:01:00", "2026-11-03 09:01:02", "2026-11-03 09:02:02", "62", "60", "ANSWERED")
    )
    land(home, "operator_a", "Master.csv", text)
    con, _, rep = run(home, "operator_a", date(2026, 11, 3))
    m = mapped(con, "operator_a")
    assert (m["n1"]["a_number"], m["n1"]["b_number"], m["n1"]["quality_flags"]) == ("+442079460002", "+447700900123", None)
    assert (m["n2"]["a_number"], m["n2"]["a_number_raw"], m["n2"]["quality_flags"]) == (None, "033005122192", ["a_number_invalid"])
    assert m["n2"]["b_number"] == "+447700900124" and m["n2"]["duration_s"] == 60 and m["n2"]["ring_s"] == 2
    assert rep[date(2026, 11, 3)].flags == {"a_number_invalid": 1} and rep[date(2026, 11, 3)].rejected == 0

    header = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration\n"
    land(home, "operator_c", "w.csv", header
         + "w1,2026-11-03T10:00:00Z,,2026-11-03T10:00:01.5Z,447700900123,4930123456,a,b,300,1500,487,Request Terminated,487,orig,0\n"
         + "w2,2026-11-03T10:00:00+01:00,2026-11-03T10:00:07+01:00,2026-11-03T10:01:07+01:00,0033612345678,33612345679,a,b,300,7000,200,OK,16,term,60\n")
    con.close()
    con, _, rep = run(home, "operator_c", date(2026, 11, 3))
    m = mapped(con, "operator_c")
    assert (m["w1"]["q850_cause"], m["w1"]["sip_code"], m["w1"]["quality_flags"]) == (None, 487, ["q850_cause_invalid"])
    assert m["w1"]["disposition"] == "cancelled" and m["w1"]["ring_s"] == 1.5 and not m["w1"]["answered"]
    assert m["w2"]["start_time"] == utc(2026, 11, 3, 9, 0) and m["w2"]["ring_s"] == 7 and m["w2"]["duration_s"] == 60
    assert m["w2"]["a_number"] == "+33612345678" and m["w2"]["b_number"] == "+33612345679"
    assert rep[date(2026, 11, 3)].flags == {"q850_cause_invalid": 1}
