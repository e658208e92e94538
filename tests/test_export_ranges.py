"""`voicefw export-ranges`: the day's suspicious ranges as CSV / Kamailio / OpenSIPS dialplan tables,
and the Kamailio table loaded into a real Kamailio that then refuses a listed caller and passes others."""

from __future__ import annotations

import csv
import io
import re
import shutil
from dataclasses import dataclass

import duckdb
import pytest

from tests.switches.formats import read_dbtext
from tests.switches.kamailio import PlannedCall, place_calls
from voicefw_assets.cli import main
from voicefw_assets.export_ranges import KAMAILIO_DIALPLAN, OPENSIPS_DIALPLAN
from voicefw_assets.settings import paths

DAY = "2026-12-01"
# a_range, calls, flagged: a campaign, a weak one, one inside the allow-list, one holding a bank number
RANGES = [("+44740012", 140, 120), ("+44740021", 9, 3), ("+44800123", 60, 55), ("+491520123", 80, 70)]
ALLOW = """never_block:
  - {prefix: "+44800", reason: bank OTP sender}
  - {prefix: "+4915201235555", reason: "bank OTP sender: one number"}
  - {prefix: "112", reason: emergency}
"""


@pytest.fixture
def warehouse(home):
    """A warehouse file holding the day's suspicious_ranges rows (columns as the asset writes them)."""
    con = duckdb.connect(str(paths().warehouse))
    con.execute("""CREATE TABLE suspicious_ranges (partition_date DATE, a_range VARCHAR, calls BIGINT,
        distinct_b_numbers BIGINT, distinct_a_numbers BIGINT, flagged_calls BIGINT, flagged_share DOUBLE,
        max_score DOUBLE, first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ, operators VARCHAR, trunks VARCHAR,
        model_version VARCHAR)""")
    for a_range, calls, flagged in RANGES:
        con.execute("INSERT INTO suspicious_ranges VALUES (?, ?, ?, ?, 40, ?, ?, 0.97, ?, ?, 'kamailio', '127.0.0.2', 'm1')",
                    [DAY, a_range, calls, calls, flagged, round(flagged / calls, 4), f"{DAY} 08:00:00+00",
                     f"{DAY} 09:30:00+00"])
    con.execute("CREATE TABLE scored_calls AS SELECT DATE '2026-12-02' AS partition_date")  # another day scored
    con.close()
    (home / "allow.yaml").write_text(ALLOW)
    return home


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def export(capsys):
    """`voicefw export-ranges ...` through the CLI's own parser, in this process (a CLI start costs ~2 s)."""

    def run(*args: str) -> Result:
        code = main(["export-ranges", *args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def test_csv_lists_block_and_allow_rules_most_flagged_first(export, warehouse):
    r = export("--date", DAY, "--allow-list", str(warehouse / "allow.yaml"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["action"], x["prefix"]) for x in rows] == [
        ("block", "+44740012"), ("block", "+491520123"), ("block", "+44740021"),
        ("allow", "+44800"), ("allow", "+4915201235555"), ("allow", "112")]
    assert rows[0]["flagged_calls"] == "120" and rows[0]["calls"] == "140" and rows[0]["trunks"] == "127.0.0.2"
    assert rows[0]["match_regex"] == "^[+]44740012[0-9]{4}$" and rows[3]["match_regex"] == "^[+]44800[0-9]*$"
    assert "+44800123 - allow-listed by +44800 (bank OTP sender)" in r.stderr  # said, not silently dropped


def test_min_flagged_and_out_file(export, warehouse):
    out = warehouse / "ranges.csv"
    r = export("--date", DAY, "--min-flagged", "50", "--out", str(out),
               "--allow-list", str(warehouse / "allow.yaml"))
    assert r.returncode == 0 and r.stdout == ""
    blocked = [x["prefix"] for x in csv.DictReader(out.open()) if x["action"] == "block"]
    assert blocked == ["+44740012", "+491520123"]
    assert not list(warehouse.glob(".ranges.csv.tmp"))


def test_switch_tables_follow_their_documented_db_text_schemas(export, warehouse):
    allow = str(warehouse / "allow.yaml")
    for fmt, declaration in (("kamailio", KAMAILIO_DIALPLAN), ("opensips", OPENSIPS_DIALPLAN)):
        out = warehouse / fmt / "dialplan"
        out.parent.mkdir()
        r = export("--date", DAY, "--format", fmt, "--dpid", "42", "--out", str(out), "--allow-list", allow)
        assert r.returncode == 0, r.stderr
        assert out.read_text().splitlines()[0] == declaration
        rows = read_dbtext(out)
        assert [len(row) for row in rows] == [len(declaration.split(" "))] * 6
        assert {(row["dpid"], row["match_op"]) for row in rows} == {("42", "1")}
        rules = [(row["attrs"], int(row["pr"]), row["match_exp"]) for row in rows]
        assert [a for a, _, _ in rules] == ["block"] * 3 + ["allow"] * 3
        assert all(pr == (1 if a == "allow" else 2) for a, pr, _ in rules)

        def first_match(number: str) -> str | None:  # the dialplan's rule: lowest pr first
            hits = sorted((pr, a) for a, pr, exp in rules if re.search(exp, number))
            return hits[0][1] if hits else None

        assert first_match("+447400123456") == "block"
        assert first_match("+4474001234567") is None  # one digit too many: another range
        assert first_match("+4915201235555") == "allow" and first_match("+4915201231234") == "block"
        assert first_match("+447700900001") is None and first_match("112") == "allow"


@pytest.mark.parametrize(
    ("args", "allow", "message"),
    [
        (["--date", "01/12/2026"], ALLOW, "--date '01/12/2026' is not a YYYY-MM-DD day"),
        (["--date", "2026-12-02"], ALLOW, None),  # scored, nothing flagged: an empty list is an answer
        (["--date", "2026-12-03"], ALLOW, "no scored calls on 2026-12-03"),
        (["--date", DAY], "never_block:\n  - {prefix: '+44 800', reason: bank}\n", "never_block[0].prefix"),
        (["--date", DAY], "never_block:\n  - {prefix: '+44800'}\n", "expected exactly `prefix` and `reason`"),
        (["--date", DAY, "--min-flagged", "0"], ALLOW, "--min-flagged must be at least 1"),
    ],
)
def test_refusals_name_what_to_fix(export, warehouse, args, allow, message):
    (warehouse / "allow.yaml").write_text(allow)
    r = export(*args, "--allow-list", str(warehouse / "allow.yaml"))
    if message is None:
        assert r.returncode == 0 and [x["action"] for x in csv.DictReader(io.StringIO(r.stdout))] == ["allow"] * 3
    else:
        assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr


def test_no_warehouse_is_refused(export, home):
    r = export("--date", DAY)
    assert r.returncode == 2 and "no warehouse at" in r.stderr and not paths().warehouse.exists()


def test_kamailio_loads_the_export_and_rejects_a_listed_range(export, warehouse, tmp_path):
    if not (shutil.which("kamailio") and shutil.which("sipp")):
        pytest.fail("kamailio/sipp missing: run `bash .ci/switches.sh install` (make test does)")
    dbdir = tmp_path / "enforcement"
    dbdir.mkdir()
    r = export("--date", DAY, "--format", "kamailio", "--dpid", "100", "--min-flagged", "5",
               "--out", str(dbdir / "dialplan"), "--allow-list", str(warehouse / "allow.yaml"))
    assert r.returncode == 0, r.stderr
    (dbdir / "version").write_text("table_name(str) table_version(int)\ndialplan:2\n")
    plan = [
        PlannedCall("+447400123456", "+441632960201", "blocked"),  # campaign range +44740012
        PlannedCall("+4915201231234", "+441632960202", "blocked"),  # range +491520123
        PlannedCall("+4915201235555", "+441632960203", "answered", ring_ms=0, hold_ms=300),  # allow-listed number in it
        PlannedCall("+447400212345", "+441632960204", "answered", ring_ms=0, hold_ms=300),  # below --min-flagged
        PlannedCall("+448001234567", "+441632960205", "answered", ring_ms=0, hold_ms=300),  # allow-listed range
        PlannedCall("+447700900001", "+441632960206", "answered", ring_ms=0, hold_ms=300),  # never reported
    ]
    run = place_calls(plan, tmp_path / "switch", default_rate=20, proxy_defines=(
        "WITH_BLOCKLIST", f'BLOCKLIST_URL="text://{dbdir}"', "BLOCKLIST_DPID=100"))
    outcome = {c.plan.caller: (c.sipp["final"][2], "blocked" in c.proxy) for c in run.calls}
    assert outcome == {
        "+447400123456": ("603", True), "+4915201231234": ("603", True),
        "+4915201235555": ("200", False), "+447400212345": ("200", False),
        "+448001234567": ("200", False), "+447700900001": ("200", False),
    }
