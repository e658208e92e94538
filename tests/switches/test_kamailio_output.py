"""Real Kamailio accounting output, produced on loopback with SIPp, checked against what both sides logged.

One session-scoped run (conftest.py) places every kind of call (answered and released by either side, cancelled
while ringing like a flash call, rejected 486/603/404/503, unanswered until the proxy's INVITE timer)
from two ingress trunks, with Call-IDs holding `:` and `\\` and a reason phrase holding `:` `\\` `|`.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.switches.expect import expected, read_expectations, tv
from tests.switches.formats import read_dbtext, read_flatstore
from tests.switches.kamailio import FLATSTORE_COLUMNS
from tests.switches.sample import FR_INV_MS, PLAN

OUTCOME = {  # kind -> (sip code, release side)
    "answered": (200, "caller"), "answered_callee_bye": (200, "callee"), "cancelled": (487, "caller"),
    "no_answer": (408, "network"),
}  # fmt: skip
CLOCK_S = Decimal("0.25")  # proxy and SIPp read the same host clock a few ms apart; this is generous


def test_every_planned_call_happened_as_planned(switch_run):
    run, exp = switch_run
    assert len(exp) == len(PLAN) and {e.kind for e in exp.values()} == {c.kind for c in PLAN}
    for e in exp.values():
        plan = next(c for c in PLAN if c.caller == e.a_number_raw and c.callee == e.b_number_raw)
        code, side = OUTCOME.get(plan.kind, (plan.code, "callee"))
        # a proxy never forwards a 503 (RFC 3261 16.7): the caller gets 500, acc logs the callee's 503
        assert (e.sip_code, e.release_side, e.sipp_final_code) == (code, side, 500 if code == 503 else code), e
        assert e.ingress == plan.trunk_ip
        assert e.start < (e.answer or e.end) <= e.end
        # the proxy's microsecond times agree with the caller's own clock readings
        assert abs(e.start - e.sipp_invite) < CLOCK_S and abs(e.end - e.sipp_end) < CLOCK_S, e
        if e.answered:
            assert abs(e.answer - e.sipp_answer) < CLOCK_S
        if plan.kind == "cancelled":  # flash-call shape: caller gives up after ringing ring_ms
            assert abs(e.ring_s - Decimal(plan.ring_ms) / 1000) < CLOCK_S and e.duration_s == 0
        if plan.kind == "no_answer":
            assert abs(e.ring_s - Decimal(FR_INV_MS) / 1000) < CLOCK_S
        if plan.kind == "answered":
            assert abs(e.duration_s - Decimal(plan.hold_ms) / 1000) < CLOCK_S
    assert {r["call_id"] for r in read_expectations(run.workdir / "expected.csv")} == set(exp)
    assert all(":" in cid and "\\" in cid for cid in exp)  # escaping is exercised


def test_dbtext_acc_cdrs_has_each_call_once_with_the_logged_times(switch_run):
    run, exp = switch_run
    declaration = run.table("acc_cdrs").read_text().splitlines()[0]
    assert declaration.startswith("id(int,auto) start_time(int) end_time(int) duration(double) callid(string,null)")
    rows = read_dbtext(run.table("acc_cdrs"))
    ids = [int(r["id"]) for r in rows]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert sorted(r["callid"] for r in rows) == sorted(exp)  # every call exactly once
    raw = run.table("acc_cdrs").read_text()
    assert "Decline\\: not\\\\now|later" in raw and "vfw\\:" in raw  # `:` and `\` escaped, `|` not
    for r in rows:
        e = exp[r["callid"]]
        assert (tv(r["setup_tv"]), tv(r["answer_tv"]), tv(r["end_tv"])) == (e.start, e.answer, e.end)
        assert (int(r["sip_code"]), r["release_side"], r["src_ip"]) == (e.sip_code, e.release_side, e.ingress)
        assert int(r["start_time"]) == int(e.start)  # epoch seconds, truncated
        # duration counts from the INVITE (ringing included), 2 decimals; 0 and end = start when unanswered
        if e.answered:
            assert abs(Decimal(r["duration"]) - (e.end - e.start)) <= Decimal("0.011")
            assert int(r["end_time"]) == int(e.end)
        else:
            assert (Decimal(r["duration"]), int(r["end_time"])) == (0, int(e.start))


def test_dbtext_acc_and_missed_calls_hold_the_call_events(switch_run):
    run, exp = switch_run
    acc, missed = read_dbtext(run.table("acc")), read_dbtext(run.table("missed_calls"))
    for table in (acc, missed):
        ids = [int(r["id"]) for r in table]
        assert ids == sorted(ids, reverse=True)
    answered = {cid for cid, e in exp.items() if e.answered}
    assert sorted(r["callid"] for r in acc if r["method"] == "INVITE") == sorted(answered)
    assert sorted(r["callid"] for r in acc if r["method"] == "BYE") == sorted(answered)
    assert sorted(r["callid"] for r in missed) == sorted(set(exp) - answered)
    invites = {r["callid"]: r for r in acc if r["method"] == "INVITE"}
    for r in acc + missed:
        e = exp[r["callid"]]
        t = Decimal(r["time_sec"]) + Decimal(r["time_usec"]) / 1_000_000  # µs as a plain int
        assert int(r["time"]) == int(r["time_sec"]) and tv(r["setup_tv"]) == e.start
        if r["method"] == "BYE":  # the end; the caller hung up iff the BYE carries the INVITE's From tag
            assert abs(t - e.end) < CLOCK_S
            side = "caller" if r["from_tag"] == invites[r["callid"]]["from_tag"] else "callee"
            assert side == e.release_side
        else:  # the answer, or the failure reply
            assert abs(t - (e.answer or e.end)) < CLOCK_S
            assert (int(r["sip_code"]), r["src_user"], r["src_ip"]) == (e.sip_code, e.a_number_raw, e.ingress)


def test_flatstore_holds_the_same_records_unescaped(switch_run):
    run, exp = switch_run
    cdr_files = run.flatstore_files("acc_cdrs")
    assert cdr_files and all(p.name.startswith("acc_cdrs_") for p in cdr_files)
    cdrs = read_flatstore(cdr_files, FLATSTORE_COLUMNS["acc_cdrs"])
    assert sorted(r["callid"] for r in cdrs) == sorted(exp)
    text = "".join(p.read_text() for p in cdr_files)
    assert "Decline: not\\now%7Clater" in text and "vfw:" in text  # only `|` is encoded
    dbtext = {r["callid"]: r for r in read_dbtext(run.table("acc_cdrs"))}
    for r in cdrs:
        mine = dbtext[r["callid"]]
        assert {k: r[k] for k in r if k != "duration"} == {k: mine[k] for k in r if k != "duration"}
        assert f"{float(r['duration']):.2f}" == mine["duration"]  # db_text prints the double with %.2f
    events = read_flatstore(run.flatstore_files("acc") + run.flatstore_files("missed_calls"),
                            FLATSTORE_COLUMNS["acc"])
    assert len(events) == len(read_dbtext(run.table("acc"))) + len(read_dbtext(run.table("missed_calls")))


def test_an_incomplete_call_is_not_taken_as_a_reference(switch_run):
    run, _ = switch_run
    record = run.calls[0]
    broken = type(record)(record.call_id, record.plan, record.sipp, {k: v for k, v in record.proxy.items()
                                                                    if k not in ("bye", "failed")})
    with pytest.raises(ValueError, match="missing proxy bye/failed"):
        expected(broken)
