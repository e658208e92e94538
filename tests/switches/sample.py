"""A small fixed set of real calls covering every outcome, and a script that writes one run of it.

    .venv/bin/python -m tests.switches.sample OUT_DIR

writes OUT_DIR/dbtext/{acc,missed_calls,acc_cdrs}, OUT_DIR/flatstore/*.log and OUT_DIR/expected.csv
(what the proxy and SIPp logged per call): the sample in tests/switches/samples/kamailio/ was made so.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.switches.expect import write_expectations
from tests.switches.kamailio import PlannedCall, place_calls

FR_INV_MS = 2500
TRUNK_A, TRUNK_B = "127.0.0.2", "127.0.0.3"
CALL_ID_FORMAT = "vfw:%u\\%p@%s"  # `:` and `\` are legal in a Call-ID and must survive escaping
PLAN = [
    PlannedCall("+447700900101", "+441632960101", "answered", TRUNK_A, ring_ms=500, hold_ms=1200),
    PlannedCall("07700900102", "01632960102", "answered", TRUNK_B, ring_ms=1000, hold_ms=1200),
    PlannedCall("anonymous", "+441632960103", "answered", TRUNK_A, ring_ms=500, hold_ms=1200),
    PlannedCall("+447700900104", "+441632960104", "answered_callee_bye", TRUNK_A, ring_ms=500, hold_ms=500),
    PlannedCall("+4915112345105", "+441632960105", "answered_callee_bye", TRUNK_B, ring_ms=1000, hold_ms=500),
    PlannedCall("+447700900106", "+441632960106", "cancelled", TRUNK_A, ring_ms=1000, truth="flash"),
    PlannedCall("+447700900107", "+441632960107", "cancelled", TRUNK_A, ring_ms=1600, truth="flash"),
    PlannedCall("+447700900108", "+441632960108", "cancelled", TRUNK_B, ring_ms=1800),
    PlannedCall("+447700900109", "+441632960109", "rejected", TRUNK_A, ring_ms=500, code=486),
    PlannedCall("+447700900110", "+441632960110", "rejected", TRUNK_B, ring_ms=500, code=603),
    PlannedCall("+447700900111", "+441632960111", "rejected", TRUNK_A, ring_ms=0, code=404),
    PlannedCall("+447700900112", "+441632960112", "rejected", TRUNK_A, ring_ms=0, code=503),
    PlannedCall("+447700900113", "+441632960113", "no_answer", TRUNK_A),
    PlannedCall("+447700900114", "+441632960114", "no_answer", TRUNK_B),
]


def place_sample(workdir: Path):
    """Place PLAN through a fresh Kamailio in workdir; returns the run and its expectations."""
    run = place_calls(PLAN, workdir, fr_inv_ms=FR_INV_MS, default_rate=20, call_id_format=CALL_ID_FORMAT)
    return run, write_expectations(run.calls, workdir / "expected.csv")


def main(out: str) -> int:
    dest = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        run, rows = place_sample(Path(tmp) / "run")
        dest.mkdir(parents=True, exist_ok=True)
        for table in ("acc", "missed_calls", "acc_cdrs"):
            (dest / "dbtext").mkdir(exist_ok=True)
            shutil.copyfile(run.table(table), dest / "dbtext" / table)
            (dest / "flatstore").mkdir(exist_ok=True)
            for f in run.flatstore_files(table):
                shutil.copyfile(f, dest / "flatstore" / f.name)
        shutil.copyfile(run.workdir / "expected.csv", dest / "expected.csv")
    print(f"{len(rows)} calls -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
