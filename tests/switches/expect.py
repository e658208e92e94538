"""What the canonical mapping of each real call must be, from what the proxy and SIPp logged.

The proxy's log lines (`VFW|<call-id>|invite|<$TV(Sn)>|...`) carry the same microsecond values that
Kamailio wrote into the CDR columns, through a channel other than the files under test; SIPp's
`gettimeofday` lines are the caller's own view, used to check the proxy's times against an
independent clock reading (same host, so within milliseconds).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tests.switches.kamailio import CallRecord

# SIP final code -> canonical disposition, as the shipped Kamailio configs map it
DISPOSITION_OF_CODE = {200: "answered", 486: "busy", 600: "busy", 603: "busy", 487: "cancelled",
                       408: "no_answer", 480: "no_answer"}
FAILED = "failed"

EXPECTATION_COLUMNS = (
    "call_id", "kind", "truth", "scenario", "campaign", "a_number_raw", "b_number_raw", "ingress",
    "start_time", "answer_time", "end_time", "answered", "sip_code", "disposition", "release_side",
    "ring_s", "duration_s",
    "sipp_invite", "sipp_answer", "sipp_end", "sipp_final_code",
)  # fmt: skip


def tv(text: str | None) -> Decimal | None:
    """`1796093693.940445` (Kamailio `$TV(Sn)`) exactly, as a Decimal."""
    return Decimal(text) if text else None


def sipp_tv(seconds: str, micros: str) -> Decimal:
    """SIPp prints gettimeofday's two parts as doubles (`1796093643.000000`, `58983.000000`)."""
    return Decimal(int(float(seconds))) + Decimal(int(float(micros))) / Decimal(1_000_000)


def iso(t: Decimal | None) -> str:
    if t is None:
        return ""
    whole, frac = divmod(t, 1)
    return datetime.fromtimestamp(int(whole), UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{int(frac * 1_000_000):06d}+00:00"


@dataclass(frozen=True)
class Expected:
    call_id: str
    kind: str
    truth: str
    scenario: str
    campaign: str
    a_number_raw: str
    b_number_raw: str
    ingress: str
    start: Decimal
    answer: Decimal | None
    end: Decimal
    sip_code: int
    release_side: str
    sipp_invite: Decimal
    sipp_answer: Decimal | None
    sipp_end: Decimal
    sipp_final_code: int

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def disposition(self) -> str:
        return DISPOSITION_OF_CODE.get(self.sip_code, FAILED)

    @property
    def ring_s(self) -> Decimal:
        return (self.answer if self.answered else self.end) - self.start

    @property
    def duration_s(self) -> Decimal:
        return self.end - self.answer if self.answered else Decimal(0)

    def row(self) -> dict[str, str]:
        return {
            "call_id": self.call_id, "kind": self.kind, "truth": self.truth, "scenario": self.scenario,
            "campaign": self.campaign, "a_number_raw": self.a_number_raw, "b_number_raw": self.b_number_raw,
            "ingress": self.ingress, "start_time": iso(self.start), "answer_time": iso(self.answer),
            "end_time": iso(self.end), "answered": str(self.answered).lower(), "sip_code": str(self.sip_code),
            "disposition": self.disposition, "release_side": self.release_side, "ring_s": f"{self.ring_s:.6f}",
            "duration_s": f"{self.duration_s:.6f}", "sipp_invite": iso(self.sipp_invite),
            "sipp_answer": iso(self.sipp_answer), "sipp_end": iso(self.sipp_end),
            "sipp_final_code": str(self.sipp_final_code),
        }  # fmt: skip


class IncompleteCall(ValueError):
    """A planned call that one side did not log completely: the run is not a usable reference."""


def expected(record: CallRecord) -> Expected:
    p, s, k = record.proxy, record.sipp, record.plan
    missing = [f"proxy {e}" for e in ("invite",) if e not in p] + [f"sipp {e}" for e in ("invite", "final") if e not in s]
    end_event = "bye" if "bye" in p else "failed" if "failed" in p else None
    if end_event is None:
        missing.append("proxy bye/failed")
    if missing:
        raise IncompleteCall(f"{record.call_id} ({k.kind}): missing {', '.join(missing)}")
    answered = "answer" in p
    code = int(p["answer"][1]) if answered else int(p["failed"][1])
    release = p[end_event][-1]
    sipp_end = s.get("bye", s.get("cancel", s["final"]))
    return Expected(
        call_id=record.call_id, kind=k.kind, truth=k.truth, scenario=k.scenario or k.kind, campaign=k.campaign,
        a_number_raw=p["invite"][1], b_number_raw=p["invite"][2], ingress=p["invite"][3],
        start=tv(p["invite"][0]), answer=tv(p["answer"][0]) if answered else None, end=tv(p[end_event][0]),
        sip_code=code, release_side=release,
        sipp_invite=sipp_tv(*s["invite"][:2]),
        sipp_answer=sipp_tv(*s["final"][:2]) if s["final"][2] == "200" else None,
        sipp_end=sipp_tv(*sipp_end[:2]), sipp_final_code=int(s["final"][2]),
    )


def write_expectations(records: list[CallRecord], path: Path) -> list[Expected]:
    rows = [expected(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=EXPECTATION_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(e.row() for e in sorted(rows, key=lambda e: (e.start, e.call_id)))
    return rows


def read_expectations(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


GROUND_TRUTH_COLUMNS = ("operator", "call_id", "truth", "scenario", "campaign")


def merge_ground_truth(rows: list[Expected], operator: str, home: Path) -> list[Path]:
    """Add these calls to <home>/ground_truth/<operator>/<UTC day>.csv (the simulator's layout),
    keeping rows already there, ordered by start time; written via a dot-name and a rename."""
    by_day: dict[str, list[Expected]] = defaultdict(list)
    for e in rows:
        by_day[iso(e.start)[:10]].append(e)
    written = []
    for day, calls in sorted(by_day.items()):
        path = home / "ground_truth" / operator / f"{day}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        old = list(csv.DictReader(path.open(newline=""))) if path.exists() else []
        known = {r["call_id"] for r in old}
        new = [dict(zip(GROUND_TRUTH_COLUMNS, (operator, e.call_id, e.truth, e.scenario, e.campaign), strict=True))
               for e in sorted(calls, key=lambda e: (e.start, e.call_id)) if e.call_id not in known]
        tmp = path.with_name(f".{path.name}.part")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=GROUND_TRUTH_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(old + new)
        os.replace(tmp, path)
        written.append(path)
    return written
