"""call_features: point-in-time correctness, and batch SQL == online Python to 1e-9.

`make_mapped_cdrs` writes a small but realistic mapped_cdrs (normal traffic, flash-call
campaigns rotating A-suffixes, a wangiri bait number, call-backs, whole-second start times so
there are ties, long calls ending after later calls start) plus simulator-style ground truth.
test_model.py uses it too.
"""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from voicefw_assets.batch_features import call_features_select
from voicefw_assets.features import FEATURE_NAMES, ID_COLUMNS
from voicefw_assets.online_features import OnlineHistory

TZ = {"operator_a": "Europe/London", "operator_b": "Europe/Berlin", "operator_c": "UTC"}
TRUNKS = {"operator_a": ["lon-sbc1", "lon-sbc2"], "operator_b": ["fra-gw1", "fra-gw2"], "operator_c": ["ix-1", "ix-2", "ix-3"]}
SCHEMA = """CREATE TABLE IF NOT EXISTS mapped_cdrs (
  operator VARCHAR, call_id VARCHAR, partition_date DATE, start_time TIMESTAMPTZ, answer_time TIMESTAMPTZ,
  end_time TIMESTAMPTZ, a_number VARCHAR, a_number_raw VARCHAR, b_number VARCHAR, b_number_raw VARCHAR,
  ingress_trunk VARCHAR, egress_trunk VARCHAR, answered BOOLEAN, disposition VARCHAR, sip_code INTEGER,
  q850_cause INTEGER, release_side VARCHAR, duration_s DOUBLE, ring_s DOUBLE, source_file VARCHAR, source_line BIGINT)"""


def _calls_for_day(day: date, n_normal: int, rng: np.random.Generator) -> pd.DataFrame:
    t0 = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    rows = []

    def add(op, start, a, b, truth, answered, ring, dur, release, disposition, scenario, campaign=None):
        rows.append(dict(operator=op, start=start, a=a, b=b, truth=truth, answered=answered, ring=ring, dur=dur,
                         release="unknown" if op == "operator_a" else release, disposition=disposition,
                         scenario=scenario, campaign=campaign))

    a_pool = [f"+4477009{n:05d}" for n in rng.choice(100000, 800, replace=False)]
    b_pool = [f"+4930{n:07d}" for n in rng.choice(10**7, 1500, replace=False)] + [f"+4479111{n:05d}" for n in range(500)]
    for _ in range(n_normal):
        op = rng.choice(list(TZ))
        start = t0 + timedelta(seconds=int(rng.integers(0, 86400)))
        a = None if rng.random() < 0.03 else a_pool[int(rng.integers(len(a_pool)))]
        b = b_pool[int(rng.integers(len(b_pool)))]
        r = rng.random()
        if r < 0.62:
            add(op, start, a, b, "normal", True, float(rng.uniform(2, 20)), float(rng.exponential(300) + 1), rng.choice(["caller", "callee"]), "answered", "normal")
        elif r < 0.72:  # impatient humans: short unanswered, caller hangs up (label noise)
            add(op, start, a, b, "normal", False, float(rng.uniform(1, 4)), 0.0, "caller", "cancelled", "hangup")
        elif r < 0.92:
            add(op, start, a, b, "normal", False, float(rng.uniform(10, 40)), 0.0, "callee", "no_answer", "no_answer")
        else:
            add(op, start, a, b, "normal", False, float(rng.uniform(0, 2)), 0.0, "network", "busy", "busy")
    for c, rng_prefix in enumerate(["+3712345", "+2348099", "+4477123"]):  # flash-call (OTP) campaigns
        for _burst in range(4):
            t = t0 + timedelta(seconds=int(rng.integers(0, 80000)))
            op = ["operator_c", "operator_b", "operator_a"][c]
            for _ in range(int(rng.integers(15, 40))):
                t += timedelta(seconds=int(rng.integers(0, 8)))
                a = f"{rng_prefix}{int(rng.integers(10000)):04d}"
                add(op, t, a, b_pool[int(rng.integers(len(b_pool)))], "flash", False, float(rng.uniform(0.3, 2.5)), 0.0,
                    "caller", "cancelled", "otp_flash", f"otp{c}")
    bait = "+88213000" + f"{int(rng.integers(1000)):03d}"  # wangiri: one fixed bait number
    t = t0 + timedelta(seconds=int(rng.integers(0, 70000)))
    victims = []
    for _ in range(30):
        t += timedelta(seconds=int(rng.integers(1, 30)))
        b = b_pool[int(rng.integers(len(b_pool)))]
        victims.append((t, b))
        add("operator_c", t, bait, b, "wangiri", False, float(rng.uniform(0.5, 1.5)), 0.0, "caller", "cancelled", "one_ring", "w1")
    for vt, b in victims[:5]:  # some victims call back
        add("operator_b", vt + timedelta(seconds=int(rng.integers(60, 3000))), b, bait, "callback", True, 3.0, 45.0, "caller", "answered", "callback", "w1")
    df = pd.DataFrame(rows)
    df["call_id"] = [f"{day:%Y%m%d}-{i:06d}" for i in range(len(df))]
    return df


def make_mapped_cdrs(db: Path, days: list[str], n_normal: int = 1500, seed: int = 1, truth_root: Path | None = None,
                     extra: list[dict] | None = None) -> None:
    """Append the calls of `days` to mapped_cdrs in `db` (and ground truth CSVs under truth_root)."""
    rng = np.random.default_rng(seed)
    frames = [_calls_for_day(date.fromisoformat(d), n_normal, rng) for d in days]
    df = pd.concat(frames, ignore_index=True)
    out = pd.DataFrame({
        "operator": df.operator,
        "call_id": df.call_id,
        "partition_date": [s.date() for s in df.start],
        "start_time": df.start,
        "answer_time": [s + timedelta(seconds=r) if a else pd.NaT for s, a, r in zip(df.start, df.answered, df.ring)],
        "end_time": [s + timedelta(seconds=r + d) for s, r, d in zip(df.start, df.ring, df.dur)],
        "a_number": df.a, "a_number_raw": df.a, "b_number": df.b, "b_number_raw": df.b,
        "ingress_trunk": [TRUNKS[o][int(rng.integers(len(TRUNKS[o])))] for o in df.operator],
        "egress_trunk": None, "answered": df.answered, "disposition": df.disposition,
        "sip_code": None, "q850_cause": None, "release_side": df.release,
        "duration_s": df.dur, "ring_s": df.ring, "source_file": "fixture.csv", "source_line": np.arange(len(df)),
    })
    out = out[out.partition_date.isin([date.fromisoformat(d) for d in days])]
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone='UTC'")
    con.execute(SCHEMA)
    con.register("new_rows", out)
    con.execute("INSERT INTO mapped_cdrs SELECT * FROM new_rows")
    for row in extra or []:
        cols = ", ".join(row)
        con.execute(f"INSERT INTO mapped_cdrs ({cols}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    con.close()
    if truth_root is not None:
        df["partition_date"] = [s.date().isoformat() for s in df.start]
        for (op, d), g in df.groupby(["operator", "partition_date"]):
            if d not in days:
                continue
            p = truth_root / op / f"{d}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["operator", "call_id", "truth", "scenario", "campaign"])
                for r in g.itertuples():
                    w.writerow([r.operator, r.call_id, r.truth, r.scenario, r.campaign or ""])


def batch_features(db: Path, day: str) -> pd.DataFrame:
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone='UTC'")
    df = con.execute(call_features_select(con, day, TZ)).df()
    con.close()
    return df.sort_values(["operator", "call_id"]).reset_index(drop=True)


def online_features(db: Path, day: str, hist: OnlineHistory | None = None, first_day: str | None = None) -> pd.DataFrame:
    """Replay the calls of day-1 (or first_day) .. day as starts and ends in time order through OnlineHistory."""
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone='UTC'")
    calls = con.execute(f"""SELECT operator, call_id, partition_date, start_time, end_time, a_number, b_number,
        ingress_trunk, answered, ring_s FROM mapped_cdrs
        WHERE partition_date BETWEEN {f"DATE '{first_day}'" if first_day else f"DATE '{day}' - 1"} AND DATE '{day}'""").fetchall()
    con.close()
    cols = ["operator", "call_id", "partition_date", "start_time", "end_time", "a_number", "b_number", "ingress_trunk", "answered", "ring_s"]
    events = []
    for row in calls:
        c = dict(zip(cols, row))
        events.append((c["start_time"], 0, c))  # 0: query features, then 1: record the start
        events.append((c["start_time"], 1, c))
        events.append((max(c["end_time"], c["start_time"]), 2, c))
    events.sort(key=lambda e: (e[0], e[1]))
    hist = hist if hist is not None else OnlineHistory(TZ)
    out = []
    for _, kind, c in events:
        if kind == 0 and c["partition_date"].isoformat() == day:
            out.append({"operator": c["operator"], "call_id": c["call_id"]} | hist.features(c))
        elif kind == 1:
            hist.observe_start(c)
        elif kind == 2:
            hist.observe_end({"operator": c["operator"], "call_id": c["call_id"], "end_time": c["end_time"],
                              "answered": c["answered"], "ring_s": c["ring_s"]})
    return pd.DataFrame(out).sort_values(["operator", "call_id"]).reset_index(drop=True)


DAYS = ["2026-03-01", "2026-03-02"]


def _odd_numbers() -> list[dict]:
    """Calls whose numbers are not '+<digits>' (a SIP URI, a national spelling, a short code): keys
    of such values take the SQL path of the batch, not the digits path."""
    out = []
    for i in range(40):
        start = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc) + timedelta(seconds=7 * i)
        out.append(dict(operator="operator_b", call_id=f"odd{i}", partition_date=date(2026, 3, 2), start_time=start,
                        end_time=start + timedelta(seconds=2), a_number=["sip:alice@x", "07700900123", "+44 7700 900123", "+1"][i % 4],
                        b_number=["+4930123", "sip:bob@y"][i % 2], ingress_trunk="fra-gw1", answered=False, ring_s=1.0))
    return out


def test_online_equals_batch_sql(tmp_path):
    db = tmp_path / "w.duckdb"
    make_mapped_cdrs(db, DAYS, n_normal=1200, extra=_odd_numbers())
    batch, online = batch_features(db, DAYS[1]), online_features(db, DAYS[1])
    assert list(batch.columns) == list(ID_COLUMNS) + list(FEATURE_NAMES)
    assert len(batch) == len(online) > 1000
    assert (batch.call_id == online.call_id).all()
    # the data really has the hard cases: ties in start_time, ends after later starts, history across the day
    assert batch.duplicated(["start_time"]).sum() > 20
    assert batch.duplicated(["a_range", "start_time"]).sum() > 5  # ties within one key
    assert (batch["a_range__count_1m"] > 5).sum() > 20
    assert (batch["a_range__su_share_1h"] >= 0).sum() > 100
    early = batch.start_time < pd.Timestamp(DAYS[1], tz="UTC") + pd.Timedelta(hours=1)
    assert (batch.loc[early, "b_number__count_24h"] > 0).any()
    for name in FEATURE_NAMES:
        diff = np.abs(batch[name].to_numpy(float) - online[name].to_numpy(float))
        assert diff.max() <= 1e-9, f"{name}: max diff {diff.max()} (call {online.call_id[int(diff.argmax())]})"


def test_no_feature_reads_own_outcome(tmp_path):
    """Changing a call's own outcome fields leaves its features unchanged."""
    db = tmp_path / "w.duckdb"
    make_mapped_cdrs(db, DAYS, n_normal=300)
    before = batch_features(db, DAYS[1])
    con = duckdb.connect(str(db))
    con.execute("""UPDATE mapped_cdrs SET answered = NOT answered, ring_s = 99 - ring_s, duration_s = 7,
        release_side = 'callee', disposition = 'busy', sip_code = 486
        WHERE call_id = (SELECT min(call_id) FROM mapped_cdrs WHERE partition_date = DATE '2026-03-02')""")
    con.close()
    after = batch_features(db, DAYS[1])
    target = after.call_id == after.call_id[after.call_id.str.startswith("20260302")].min()
    pd.testing.assert_frame_equal(before[target].reset_index(drop=True), after[target].reset_index(drop=True))


def test_point_in_time_adding_later_calls_changes_no_earlier_features(tmp_path):
    db = tmp_path / "w.duckdb"
    make_mapped_cdrs(db, DAYS, n_normal=800, seed=3)
    before = batch_features(db, DAYS[1])
    cut = pd.Timestamp(DAYS[1], tz="UTC") + pd.Timedelta(hours=12)
    # later calls that share every key with earlier ones (same A-range, B-numbers, trunks), incl. a tie at the cut
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone='UTC'")
    con.execute(f"""INSERT INTO mapped_cdrs
        SELECT operator, 'late-' || call_id, partition_date, start_time + INTERVAL 12 HOUR, NULL,
               end_time + INTERVAL 12 HOUR, a_number, a_number_raw, b_number, b_number_raw, ingress_trunk, egress_trunk,
               false, 'cancelled', NULL, NULL, 'caller', 0, 1.0, source_file, source_line
        FROM mapped_cdrs WHERE partition_date = DATE '{DAYS[1]}' AND start_time < TIMESTAMPTZ '{cut.isoformat()}'
          AND start_time >= TIMESTAMPTZ '{cut.isoformat()}' - INTERVAL 6 HOUR""")
    con.close()
    after = batch_features(db, DAYS[1])
    assert len(after) > len(before)
    earlier = before[before.start_time < cut]
    merged = earlier.merge(after, on=["operator", "call_id"], suffixes=("", "_after"))
    assert len(merged) == len(earlier) > 300
    for name in FEATURE_NAMES:
        assert np.array_equal(merged[name].to_numpy(), merged[f"{name}_after"].to_numpy()), name
    # ...and the later calls do see the earlier ones
    late = after[after.call_id.str.startswith("late-")]
    assert (late["b_number__count_24h"] > 0).all()
