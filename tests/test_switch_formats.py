"""Kamailio acc tables as db_text and db_flatstore write them, hand-made from the modules' docs
(README.db_text "Internal format of a dbtext table", README.db_flatstore), mapped by the shipped configs
(operator_configs/kamailio_*.yaml), written in the config language alone: declaration header, ':' with backslash escapes, no quoting, no file
extension, newest row first, epoch times with microseconds, '%7C' for '|'."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import duckdb

from resources.landing import LandingZone
from voicefw_assets.ingest import landed_days, map_partitions, partition_checks, sync_landing
from voicefw_assets.operators import load_operator_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DBTEXT_YAML = (REPO_ROOT / "operator_configs" / "kamailio_dbtext.yaml").read_text()  # the shipped config

# newest first; `\:` and `\\` inside values; '::' is NULL; a `\t` in a reason; stock types str/string/int/double
DBTEXT = (
    "id(int,auto) start_time(int) end_time(int) duration(double) callid(str,null) src_user(string,null) "
    "dst_user(string,null) src_ip(string,null) setup_tv(string,null) answer_tv(string,null) end_tv(string,null) "
    "sip_code(string,null) sip_reason(string,null) release_side(string,null)\n"
    "4:1796093694:1796093694:0.00:vfw\\:5\\\\20537@127.0.0.2:+447700900007:+441632960007:127.0.0.2:1796093694.343882::1796093697.302005:408:Request Timeout:network\n"
    "3:1796093694:1796093694:0.00:vfw\\:3\\\\20537@127.0.0.2:07700900005:01632960005:127.0.0.3:1796093694.145526::1796093695.207739:603:Decline\\: not\\\\now|later:callee\n"
    "2:1796093693:1796093696:2.07:vfw\\:1\\\\20536@127.0.0.2:anonymous:442079460002:127.0.0.2:1796093693.940445:1796093694.503631:1796093696.012277:200:OK\\tfine:caller\n"
    "1:1796093690:1796093690:0.00:short\\:row:+447700900009\n"
)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def _run(home: Path, yaml_text: str, name: str, files: dict[str, str]):
    cfg_path = home / f"{name}.yaml"
    cfg_path.write_text(yaml_text)
    config = load_operator_config(cfg_path)
    folder = home / "landing" / name
    folder.mkdir(parents=True)
    for fname, text in files.items():
        (folder / fname).write_bytes(text.encode())
    con = duckdb.connect(str(home / "w.duckdb"))
    report = sync_landing(con, config, LandingZone())
    days = landed_days(con, name)
    reports = map_partitions(con, config, days)
    checks = partition_checks(con, name, days)
    assert all(c.passed for d in checks.values() for c in d.values()), checks
    cur = con.execute("SELECT * FROM mapped_cdrs ORDER BY source_line")
    cols = [d[0] for d in cur.description]
    rows = {r["call_id"]: r for r in (dict(zip(cols, v)) for v in cur.fetchall())}
    rejected = con.execute("SELECT source_line, reason, raw_record FROM rejected_cdrs ORDER BY 1").fetchall()
    return report, reports, rows, rejected


def test_kamailio_db_text_acc_cdrs(home):
    report, reports, rows, rejected = _run(home, DBTEXT_YAML, "kamailio_dbtext", {"acc_cdrs": DBTEXT})
    assert set(report.loaded) == {str(home / "landing" / "kamailio_dbtext" / "acc_cdrs")}
    assert set(rows) == {"vfw:5\\20537@127.0.0.2", "vfw:3\\20537@127.0.0.2", "vfw:1\\20536@127.0.0.2"}
    answered = rows["vfw:1\\20536@127.0.0.2"]
    assert answered["start_time"] == utc(2026, 12, 1, 2, 54, 53, 940445)  # 1796093693.940445, to the microsecond
    assert answered["answer_time"] == utc(2026, 12, 1, 2, 54, 54, 503631)
    assert answered["end_time"] == utc(2026, 12, 1, 2, 54, 56, 12277)
    assert answered["answered"] and answered["disposition"] == "answered" and answered["release_side"] == "caller"
    assert abs(answered["ring_s"] - 0.563186) < 1e-9 and abs(answered["duration_s"] - 1.508646) < 1e-9
    assert answered["a_number"] is None and answered["a_number_raw"] == "anonymous"  # withheld: no flag
    assert answered["b_number"] == "+442079460002"  # a country code written without '+'
    assert answered["quality_flags"] is None and answered["source_line"] == 4  # newest first: line order is not time order
    declined = rows["vfw:3\\20537@127.0.0.2"]
    assert declined["disposition"] == "busy" and declined["answer_time"] is None and declined["duration_s"] == 0
    assert declined["a_number"] == "+447700900005" and declined["b_number"] == "+441632960005" and declined["ingress_trunk"] == "127.0.0.3"
    assert abs(declined["ring_s"] - (1795.207739 - 1794.145526)) < 1e-6
    timeout = rows["vfw:5\\20537@127.0.0.2"]
    assert timeout["disposition"] == "no_answer" and timeout["release_side"] == "network" and timeout["sip_code"] == 408
    # a row with fewer fields than declared is rejected with its line, not guessed
    assert rejected == [(5, "wrong number of fields: expected 14, found 6", "1:1796093690:1796093690:0.00:short\\:row:+447700900009")]
    [day] = reports
    assert day == date(2026, 12, 1) and reports[day].lines == 4 == reports[day].mapped + reports[day].rejected


FLATSTORE_YAML = (REPO_ROOT / "operator_configs" / "kamailio_flatstore.yaml").read_text() + "  egress_trunk: sip_reason   # only so the test sees a decoded value\n"

FLATSTORE = (
    "1796093694|1796093694|0.000000|vfw:3\\20537@127.0.0.2|+447700900005|+441632960005|127.0.0.2|1796093694.145526||1796093695.207739|603|Decline: not\\now%7Clater|callee\n"
    "1796093693|1796093696|2.072000|vfw:1\\20536@127.0.0.2|+447700900001|+441632960001|127.0.0.2|1796093693.940445|1796093694.503631|1796093696.012277|200|OK|caller\n"
)


def test_kamailio_db_flatstore_acc_cdrs(home):
    _, reports, rows, rejected = _run(home, FLATSTORE_YAML, "kamailio_flatstore", {"acc_cdrs_129.log": FLATSTORE})
    assert not rejected and set(rows) == {"vfw:3\\20537@127.0.0.2", "vfw:1\\20536@127.0.0.2"}  # '\' is not an escape here
    assert rows["vfw:1\\20536@127.0.0.2"]["answer_time"] == utc(2026, 12, 1, 2, 54, 54, 503631)
    assert rows["vfw:3\\20537@127.0.0.2"]["disposition"] == "busy"
    assert rows["vfw:3\\20537@127.0.0.2"]["egress_trunk"] == "Decline: not\\now|later"  # %7C decoded, nothing else


def test_real_kamailio_db_text_sample_maps_as_the_proxy_logged(home):
    """The real acc_cdrs table of a Kamailio run (tests/switches/samples, written by Debian kamailio
    5.6 on loopback), mapped by the config above: every call, each time to the microsecond."""
    import csv

    sample = Path(__file__).parent / "switches" / "samples" / "kamailio"
    _, reports, rows, rejected = _run(home, DBTEXT_YAML, "kamailio_dbtext", {"acc_cdrs": (sample / "dbtext" / "acc_cdrs").read_text()})
    expected = {e["call_id"]: e for e in csv.DictReader((sample / "expected.csv").open())}
    assert not rejected and set(rows) == set(expected) and len(rows) >= 10
    for cid, e in expected.items():
        r = rows[cid]
        got = (r["start_time"].isoformat(), r["answer_time"].isoformat() if r["answer_time"] else "", r["end_time"].isoformat())
        assert got == (e["start_time"], e["answer_time"], e["end_time"]), cid
        assert (r["disposition"], r["release_side"], str(r["sip_code"]), r["answered"]) == (
            e["disposition"], e["release_side"], e["sip_code"], e["answered"] == "true"), cid
        assert abs(r["ring_s"] - float(e["ring_s"])) < 2e-6 and abs(r["duration_s"] - float(e["duration_s"])) < 2e-6, cid
        assert (r["a_number_raw"], r["b_number_raw"], r["ingress_trunk"]) == (e["a_number_raw"], e["b_number_raw"], e["ingress"])
