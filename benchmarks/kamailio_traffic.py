"""Real SIP proxy accounting with flash-call campaigns at real rates: Kamailio + SIPp on loopback.

    flock /tmp/voicefw-heavy.lock .venv/bin/python benchmarks/kamailio_traffic.py \\
        --minutes 10 --home "$VOICEFW_HOME" [--out /tmp/vf-kamailio] [--seed 7]

Places, in real time through a throwaway Kamailio (tests/switches/kamailio.py), OTP-provider flash
campaigns — `--ranges` A-ranges (default 4) each bursting `--range-rate` calls/min (default 50-110,
drawn per burst) through ONE busy ingress trunk (source address 127.0.0.2), cancelling after 1-2 s
of ringing — beside ordinary traffic on that trunk (`--busy-rate`, calls/min) and on two quieter trunks
(`--other-rate`): answered calls released by either side, busy/declined/not-found rejections,
unanswered calls (the proxy's INVITE timer), abandoned calls, and voice OTPs from bank ranges (short
ring, answered) as hard negatives. The busy trunk carries ~300-700 calls/min with the defaults.

Writes, without touching anything that exists:
- `<home>/landing/<operator>/`: the db_flatstore files `acc_cdrs_<rank>.log.<UTC stamp>` (operator
  `kamailio_flatstore`, the default), or with `--land dbtext` Kamailio's db_text `acc_cdrs` table as
  `acc_cdrs.<UTC stamp>`, copied after shutdown (db_text writes on shutdown; operator `kamailio_dbtext`);
- `<home>/ground_truth/<operator>/<UTC day>.csv`: the simulator's layout (operator, call_id, truth,
  scenario, campaign), merged with rows already there;
- `<out>/expected.csv`: per call what the proxy and SIPp logged (the mapping's expected values).
Prints calls per minute per trunk and per range as placed, from the proxy's own INVITE times.

Pair it with a simulated week that ends on the same UTC day (`voicefw simulate --start-date`), since
the real calls carry the machine's clock. `--minutes 0.5 --busy-rate 60 --other-rate 30 --max-hold-s 10` is a quick smoke run (~1 minute).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.switches.expect import Expected, merge_ground_truth, write_expectations  # noqa: E402
from tests.switches.kamailio import PlannedCall, place_calls  # noqa: E402

BUSY_TRUNK, OTHER_TRUNKS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
# OTP-provider ranges: E.164 number minus its last 4 digits (features.a_range_of); real-shaped mobile
# blocks of 4 countries, fictional subscribers
FLASH_RANGES = ("+44752061", "+491577123", "+3161234", "+3367891")
BANK_OTP_RANGES = ("+44800155", "+4980033")  # voice OTPs: short ring, answered: normal calls
HOME_CC = "44"


def _number(rng: random.Random, prefix: str, digits: int) -> str:
    return prefix + "".join(rng.choice("0123456789") for _ in range(digits))


def _subscriber(rng: random.Random) -> str:
    return _number(rng, "+447700", 6) if rng.random() < 0.8 else _number(rng, "07700", 6)  # some national


def _caller(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return _number(rng, "+447", 9)
    if r < 0.8:
        return _number(rng, "01632", 6)  # national format, as many trunks send it
    if r < 0.97:
        return _number(rng, rng.choice(("+4915", "+331", "+346")), 9)
    return "anonymous"


def ordinary_call(rng: random.Random, trunk: str, stream: str, max_hold_s: float) -> PlannedCall:
    """One ordinary call: the mix a retail voice network sees (shares are rough, not a model)."""
    a, b = _caller(rng), _subscriber(rng)
    cap = int(max_hold_s * 1000)
    r = rng.random()
    common = dict(trunk_ip=trunk, stream=stream, truth="normal")
    if r < 0.30:
        return PlannedCall(a, b, "answered", ring_ms=2000, ring_spread_ms=10000,
                           hold_ms=min(cap, rng.choice((20_000, 45_000, 90_000))), scenario="answered", **common)
    if r < 0.55:
        return PlannedCall(a, b, "answered_callee_bye", ring_ms=2000, ring_spread_ms=10000, hold_ms=min(cap, 5000),
                           hold_spread_ms=max(0, cap - 5000), scenario="answered", **common)
    if r < 0.68:
        return PlannedCall(a, b, "rejected", ring_ms=500, ring_spread_ms=6000, code=rng.choice((486, 486, 603, 480)),
                           scenario="busy", **common)
    if r < 0.71:
        return PlannedCall(a, b, "rejected", ring_ms=0, ring_spread_ms=300, code=404, scenario="failed", **common)
    if r < 0.81:
        return PlannedCall(a, b, "no_answer", scenario="no_answer", **common)
    if r < 0.93:
        return PlannedCall(a, b, "cancelled", ring_ms=rng.randint(4000, 25000), scenario="caller_gave_up", **common)
    if r < 0.96:
        return PlannedCall(a, b, "cancelled", ring_ms=rng.randint(1200, 3500), scenario="short_cancel", **common)
    otp = _number(rng, rng.choice(BANK_OTP_RANGES), 4)
    return PlannedCall(otp, b, "answered_callee_bye", ring_ms=1500, ring_spread_ms=3000, hold_ms=min(cap, 8000),
                       hold_spread_ms=min(cap, 6000), scenario="otp_voice", **common)


def flash_call(rng: random.Random, a_range: str, campaign: str, stream: str) -> PlannedCall:
    return PlannedCall(_number(rng, a_range, 4), _subscriber(rng), "cancelled", trunk_ip=BUSY_TRUNK,
                       ring_ms=rng.randint(1000, 2000), truth="flash", scenario="flash", campaign=campaign,
                       stream=stream)


def build_plan(args, rng: random.Random) -> tuple[list[PlannedCall], dict[str, float], dict[str, float]]:
    """Calls, calls/s per stream, start offset (s) per stream."""
    seconds = args.minutes * 60
    plan: list[PlannedCall] = []
    rates: dict[str, float] = {}
    starts: dict[str, float] = {}
    lo, hi = args.range_rate
    for k, a_range in enumerate(FLASH_RANGES[: args.ranges]):
        campaign = f"otp_flash_{k + 1}"
        t, burst = rng.uniform(0, min(60, seconds / 4)), 0
        while t < seconds:  # bursts of 1-4 min at 50-110/min with 0.5-2 min pauses
            length = min(rng.uniform(60, 240), seconds - t)
            per_min = rng.uniform(lo, hi)
            n = max(1, round(per_min * length / 60))
            stream = f"{campaign}_b{burst}"
            plan += [flash_call(rng, a_range, campaign, stream) for _ in range(n)]
            rates[stream], starts[stream] = per_min / 60, t
            t += length + rng.uniform(30, 120)
            burst += 1
    for trunk, per_min, stream in [(BUSY_TRUNK, args.busy_rate, "busy_ordinary"),
                                   *((t, args.other_rate / len(OTHER_TRUNKS), f"ordinary_{t}") for t in OTHER_TRUNKS)]:
        n = round(per_min * args.minutes)
        plan += [ordinary_call(rng, trunk, stream, args.max_hold_s) for _ in range(n)]
        rates[stream], starts[stream] = per_min / 60, 0.0
    return plan, rates, starts


def land(src: list[Path], dest_dir: Path, names: list[str]) -> list[Path]:
    """Copy into landing under names that do not exist yet (never overwrite), via a dot-name + rename."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path, name in zip(src, names, strict=True):
        dest = dest_dir / name
        if dest.exists():
            raise SystemExit(f"{dest} exists: landing is append-only")
        tmp = dest_dir / f".{name}.part"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        out.append(dest)
    return out


def report(rows: list[Expected]) -> None:
    """Calls per minute as the proxy saw them (INVITE arrival), per trunk and per flash range."""
    minute = Counter()
    for e in rows:
        key = e.ingress if e.truth != "flash" else f"{e.ingress} {e.campaign}"
        minute[(key, int(e.start // 60))] += 1
    keys = sorted({k for k, _ in minute})
    print(f"{'stream':<32} {'calls':>6} {'min/minute':>10} {'max/minute':>10}")
    for k in keys:
        counts = [c for (kk, _), c in minute.items() if kk == k]
        print(f"{k:<32} {sum(counts):>6} {min(counts):>10} {max(counts):>10}")
    trunk = Counter((e.ingress, int(e.start // 60)) for e in rows)
    busy = [c for (t, _), c in trunk.items() if t == BUSY_TRUNK]
    print(f"busy trunk {BUSY_TRUNK}: {min(busy)}-{max(busy)} calls/min (partial first/last minutes included)")
    print("outcomes:", dict(Counter((e.truth, e.disposition) for e in rows)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--ranges", type=int, default=4, choices=range(1, len(FLASH_RANGES) + 1))
    p.add_argument("--range-rate", type=lambda s: tuple(float(x) for x in s.split("-")), default=(50.0, 110.0),
                   help="calls/min per flash range during a burst, lo-hi (default 50-110)")
    p.add_argument("--busy-rate", type=float, default=200.0, help="ordinary calls/min on the busy trunk")
    p.add_argument("--other-rate", type=float, default=60.0, help="ordinary calls/min on the other trunks together")
    p.add_argument("--max-hold-s", type=float, default=120.0, help="longest answered call (a smoke run: 10)")
    p.add_argument("--fr-inv-ms", type=int, default=30_000, help="proxy's ring timeout (unanswered -> 408)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--home", default=os.environ.get("VOICEFW_HOME"), help="VOICEFW_HOME to land into")
    p.add_argument("--land", choices=("dbtext", "flatstore"), default="flatstore",
                   help="which storage module's acc_cdrs to land (both hold the same calls)")
    p.add_argument("--operator", default=None,
                   help="landing/<operator>/ and ground_truth/<operator>/ (default kamailio_<land>, a shipped config)")
    p.add_argument("--out", default=None, help="working dir (default: a new dir under /tmp)")
    args = p.parse_args(argv)
    if not args.home:
        p.error("--home or $VOICEFW_HOME is required")
    args.operator = args.operator or f"kamailio_{args.land}"
    rng = random.Random(args.seed)
    plan, rates, starts = build_plan(args, rng)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"/tmp/vf-kamailio-{stamp}")
    print(f"placing {len(plan)} calls over {args.minutes} min through Kamailio (work dir {out})", flush=True)
    t0 = time.perf_counter()
    run = place_calls(plan, out / "switch", rates=rates, starts=starts, fr_inv_ms=args.fr_inv_ms,
                      timeout_s=args.minutes * 60 + 600, call_id_format=f"%u-%p-{stamp}@%s")  # unique across runs
    rows = write_expectations(run.calls, out / "expected.csv")
    home = Path(args.home)
    if args.land == "dbtext":
        landed = land([run.table("acc_cdrs")], home / "landing" / args.operator, [f"acc_cdrs.{stamp}"])
    else:
        files = run.flatstore_files("acc_cdrs")
        landed = land(files, home / "landing" / args.operator, [f"{f.name}.{stamp}" for f in files])
    truth = merge_ground_truth(rows, args.operator, home)
    print(f"done in {time.perf_counter() - t0:.0f} s: {len(rows)} calls; landed {[str(x) for x in landed]}; "
          f"ground truth {[str(x) for x in truth]}; expectations {out / 'expected.csv'}")
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
