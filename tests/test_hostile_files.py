"""Hostile files beside a normal day: the normal files map exactly as in a clean run, nothing from
outside landing enters a table, and every hostile file is quarantined with a reason or fully
accounted for (its data lines = its mapped + rejected rows), without a run hanging."""

from __future__ import annotations

import gzip
import os
import time
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pytest

from resources.landing import LandingZone
from voicefw_assets.ingest import landed_days, map_partitions, partition_checks, survey_landing, sync_landing
from voicefw_assets.operators import operator_configs
from voicefw_assets.simulate import simulate

C_HEADER = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,pdd_ms,ring_ms,sip_code,sip_reason,q850_cause,disconnect_initiator,duration"


def c_row(i: int, reason: str = "OK", call_id: str | None = None) -> str:
    return (f"{call_id or f'h{i}'},2026-11-01T10:{i % 60:02d}:00Z,,2026-11-01T10:{i % 60:02d}:05Z,447700900{i % 1000:03d},"
            f"4930123{i % 10000:04d},gw-h,gw-t,100,5000,487,{reason},16,orig,0")


def a_row(uid: str, start: str = "2026-11-01 09:00:00") -> str:
    end = start[:-2] + "09"
    vals = ["", "07700900123", "02079460000", "from-trunk", '"Caller" <07700900123>', "SIP/bt-in-0000001a", "", "Dial", "",
            start, "", end, "9", "0", "NO ANSWER", "3", uid, ""]
    return ",".join('"' + v.replace('"', '""') + '"' for v in vals)


def hostile_files(landing: Path, outside: Path) -> dict[str, str]:
    """Write the hostile files; returns {path: expected fate} ("quarantine", "accounted", "empty", "wait")."""
    c, a = landing / "operator_c", landing / "operator_a"
    fates = {}

    def put(path: Path, data: bytes, fate: str) -> None:
        path.write_bytes(data)
        fates[str(path)] = fate

    rows = [c_row(i) for i in range(1, 7)]
    put(c / "latin1.csv", (C_HEADER + "\n" + "\n".join(rows[:2]) + "\n" + c_row(7, "Caf\xe9") + "\n").encode("latin-1"), "accounted")
    put(c / "utf16.csv", ("\r\n".join([C_HEADER, c_row(8), c_row(9)]) + "\r\n").encode("utf-16"), "accounted")
    put(c / "crlf_bom.csv", b"\xef\xbb\xbf" + ("\r\n".join([C_HEADER, c_row(10), c_row(11)]) + "\r\n").encode(), "accounted")
    put(c / "semicolon.csv", (C_HEADER.replace(",", ";") + "\n" + c_row(12).replace(",", ";") + "\n").encode(), "quarantine")
    put(c / "ten_mb_line.csv", (C_HEADER + "\n" + c_row(13) + "\n" + "x" * (10 << 20) + "\n" + c_row(14) + "\n").encode(), "accounted")
    put(c / "ten_mb_field.csv", (C_HEADER + "\n" + c_row(15, "y" * (10 << 20)) + "\n" + c_row(16) + "\n").encode(), "accounted")
    put(c / "nul.csv", (C_HEADER + "\n" + c_row(17, call_id="h\x0017") + "\n" + c_row(18) + "\n" + c_row(19) + "\n").encode(), "accounted")
    put(c / "binary.csv", bytes(range(256)) * 4000, "quarantine")
    put(c / "fake.csv.gz", (C_HEADER + "\n" + c_row(20) + "\n").encode(), "quarantine")
    put(c / "really_gzip.csv", gzip.compress((C_HEADER + "\n" + c_row(21) + "\n").encode()), "accounted")
    put(c / "truncated.csv.gz", gzip.compress((C_HEADER + "\n" + "\n".join(c_row(i) for i in range(22, 400)) + "\n").encode())[:300], "quarantine")
    put(c / "my 'odd' file \u00fcn\u00efcode.csv", (C_HEADER + "\n" + c_row(400) + "\n").encode(), "accounted")
    put(c / "-leading-dash.csv", (C_HEADER + "\n" + c_row(401) + "\n").encode(), "accounted")
    put(c / 'semi;colon"dq.csv', (C_HEADER + "\n" + c_row(402) + "\n").encode(), "accounted")
    put(c / "header_only.csv", (C_HEADER + "\n").encode(), "empty")
    put(c / "empty_too.csv", b"", "empty")
    put(c / "mixed_newlines.csv", (C_HEADER + "\r\n" + c_row(403) + "\n" + c_row(404) + "\r\n\r\n" + c_row(405)).encode(), "accounted")
    # Asterisk: an unterminated quote must cost its own line only (a CSV reader would swallow the rest)
    put(a / "Master-hostile.csv", "\n".join([a_row("x1"), a_row("x2")[:-5], a_row("x3"), a_row("x4")]).encode() + b"\n", "accounted")
    secret = outside / "secret.env"
    secret.write_text("DB_PASSWORD=hunter2-must-never-be-ingested\n")
    os.symlink(secret, c / "link_out.csv")
    fates[str(c / "link_out.csv")] = "quarantine"
    os.symlink(c / "-leading-dash.csv", c / "link_in.csv")
    fates[str(c / "link_in.csv")] = "quarantine"
    os.mkfifo(c / "pipe.csv")
    fates[str(c / "pipe.csv")] = "quarantine"
    (landing / "operator_zz").mkdir()
    put(landing / "operator_zz" / "x.csv", (C_HEADER + "\n" + c_row(500) + "\n").encode(), "quarantine")
    put(landing / "stray.csv", (C_HEADER + "\n" + c_row(501) + "\n").encode(), "quarantine")
    return fates


def run_all(con, landing: LandingZone) -> None:
    """What `voicefw materialize` and the runs do: decide every landed file as the drop sensor does
    (launch.landed: quarantines unknown folders, stray files, links...), then register and map."""
    from resources.warehouse import Warehouse
    from voicefw_assets.launch import landed

    landed(landing, Warehouse())
    for op, config in operator_configs().items():
        sync_landing(con, config, landing)
        days = landed_days(con, op)
        map_partitions(con, config, days)
        for day, checks in partition_checks(con, op, days).items():
            assert all(c.passed for c in checks.values()), (op, day, {k: v.metadata for k, v in checks.items() if not v.passed})


def mapped_by_call(con, files: set[str] | None = None) -> dict:
    cur = con.execute("SELECT * EXCLUDE (source_file), regexp_extract(source_file, '[^/]+$') AS file FROM mapped_cdrs")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return {(r["operator"], r["call_id"]): r for r in rows if files is None or r["file"] in files}


def strip_file(rows: dict) -> dict:
    return {k: {c: v for c, v in r.items() if c != "file"} for k, r in rows.items()}


def physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@pytest.mark.timeout(240)
def test_hostile_files_beside_a_normal_day(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEFW_START_DATE", "2026-10-01")
    monkeypatch.setenv("VOICEFW_SETTLE_S", "0")
    clean_home, dirty_home, outside = tmp_path / "clean", tmp_path / "dirty", tmp_path / "outside"
    outside.mkdir()
    simulate(clean_home, days=1, calls_per_day=2500, seed=11)
    shutil.copytree(clean_home / "landing", dirty_home / "landing", symlinks=True)
    normal = {p.name for p in (clean_home / "landing").rglob("*") if p.is_file()}

    monkeypatch.setenv("VOICEFW_HOME", str(clean_home))
    con = duckdb.connect(str(clean_home / "w.duckdb"))
    run_all(con, LandingZone())
    clean = mapped_by_call(con)
    con.close()
    assert len(clean) > 2000

    fates = hostile_files(dirty_home / "landing", outside)
    originals = {p: Path(p).read_bytes() if not Path(p).is_symlink() and Path(p).is_file() else None for p in fates}
    monkeypatch.setenv("VOICEFW_HOME", str(dirty_home))
    con = duckdb.connect(str(dirty_home / "w.duckdb"))
    zone = LandingZone()
    run_all(con, zone)

    # the normal files' rows are exactly those of the clean run
    # (of two files with the same bytes the earlier arrival is kept: copying changed which one that is)
    assert strip_file(mapped_by_call(con, normal)) == strip_file(clean)
    # nothing from outside landing entered any table, and the link target is untouched
    for table in ("mapped_cdrs", "rejected_cdrs", "ingest_rows"):
        hits = con.execute(f"SELECT count(*) FROM {table} WHERE CAST(COLUMNS(*) AS VARCHAR) LIKE '%hunter2%'").fetchall()
        assert all(h == 0 for h in hits[0]), table
    assert (outside / "secret.env").read_text().startswith("DB_PASSWORD=")
    # every hostile file: quarantined with a reason, empty and registered as such, or fully accounted
    quarantined = {Path(q["from"]).name: q["reason"] for q in zone.quarantined()}
    status = dict(con.execute("SELECT regexp_extract(path, '[^/]+$'), status FROM landing_files").fetchall())
    for path, fate in fates.items():
        name = Path(path).name
        if fate == "quarantine":
            assert name in quarantined and quarantined[name], name
            assert not os.path.lexists(path), name
            continue
        assert name not in quarantined, (name, quarantined.get(name))
        if fate == "empty":
            assert status[name] == "empty", name
            continue
        data = originals[path]
        if data.startswith(b"\xff\xfe"):
            data = data.decode("utf-16").encode()
        elif data.startswith(b"\x1f\x8b"):
            data = gzip.decompress(data)
        header = 0 if name.startswith("Master") else 1
        lines = physical_lines(data) - header
        accounted = con.execute(
            """SELECT (SELECT count(*) FROM mapped_cdrs WHERE source_file = $p) + (SELECT count(*) FROM rejected_cdrs WHERE source_file = $p),
                      (SELECT data_lines FROM landing_files WHERE path = $p)""", {"p": path}).fetchall()[0]
        assert accounted == (lines, lines), (name, accounted, lines)
    reasons = dict(con.execute(
        "SELECT regexp_extract(source_file, '[^/]+$') || ':' || source_line, reason FROM rejected_cdrs WHERE source_file NOT LIKE '%wholesale%'"
        " AND source_file NOT LIKE '%Master-2%' AND source_file NOT LIKE '%cdr_Stand%'").fetchall())
    assert reasons["latin1.csv:4"].startswith("not valid UTF-8: byte 0xe9 at byte offset")
    assert reasons["nul.csv:2"].startswith("NUL byte at byte offset")
    assert reasons["ten_mb_line.csv:3"].startswith("line of 10485760 bytes is longer than")
    assert reasons["ten_mb_field.csv:2"].startswith("line of")
    assert reasons["Master-hostile.csv:2"].startswith("malformed line")
    assert reasons["mixed_newlines.csv:4"] == "blank line"
    m = mapped_by_call(con)
    assert {("operator_a", "x1"), ("operator_a", "x3"), ("operator_a", "x4")} <= set(m) and ("operator_a", "x2") not in m
    assert {"h8", "h9", "h10", "h11", "h21", "h400", "h401", "h402", "h403", "h404", "h405"} <= {k[1] for k in m}
    assert quarantined["fake.csv.gz"].startswith("named .gz but not gzip")
    assert "symbolic link" in quarantined["link_out.csv"] or "symlink" in quarantined["link_out.csv"]
    assert "fifo" in quarantined["pipe.csv"].lower()
    assert "no operator config" in quarantined["x.csv"]


def test_a_file_being_written_waits(home):
    """Within the settle time a file is not read, by the survey or by registration."""
    land = home / "landing" / "operator_c"
    land.mkdir(parents=True)
    (land / "fresh.csv").write_text(C_HEADER + "\n" + c_row(1) + "\n")
    survey = survey_landing(LandingZone(settle_s=3600), operator_configs())
    assert [d.action for d in survey.decisions] == ["wait"]
    # a run waits (at most one settle time) for a young file, then reads it once it stopped changing
    zone = LandingZone(settle_s=1.5)
    con = duckdb.connect(str(home / "w.duckdb"))
    report = sync_landing(con, operator_configs()["operator_c"], zone)
    assert report.loaded == {str(land / "fresh.csv"): 1} and report.dates_touched == {date(2026, 11, 1)}
    # a file that keeps changing while the run waits is left for a later run
    path = land / "growing.csv"
    path.write_text(C_HEADER + "\n")
    import threading

    def append() -> None:
        for i in range(6):
            time.sleep(0.5)
            with path.open("a") as fh:
                fh.write(c_row(100 + i) + "\n")

    writer = threading.Thread(target=append)
    writer.start()
    report = sync_landing(con, operator_configs()["operator_c"], zone)
    writer.join()
    assert list(report.waiting) == [str(path)] and not report.loaded
