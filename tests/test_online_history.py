"""OnlineHistory's incremental structures (sliding distinct counts, prefix sums, eviction with
compaction) against a brute-force reading of the feature definitions, with events arriving out of
order (inserts in the middle, queries older than the newest event) over more than 24 h."""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from voicefw_assets.features import DISTINCT_COLUMN, FEATURE_NAMES, HISTORY_FEATURES, KEYS, NO_ENDED, SINCE_PREV_CAP_S, \
    is_short_unanswered, key_values
from voicefw_assets.online_features import OnlineHistory, to_us

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class BruteForce:
    """Every start and end ever seen, per key value; each query scans them."""

    def __init__(self) -> None:
        self.starts = defaultdict(list)  # (key, value) -> sorted [(t, a, b)]
        self.ends = defaultdict(list)  # (key, value) -> sorted [(t, su)]

    @staticmethod
    def keys(a, b, trunk):
        return dict(zip(KEYS, key_values(a, b, trunk), strict=True))

    def start(self, t, a, b, trunk):
        for k, v in self.keys(a, b, trunk).items():
            if v is not None:
                insort(self.starts[(k, v)], (t, a or "", b or ""))

    def end(self, t, su, keys):
        for k, v in keys.items():
            if v is not None:
                insort(self.ends[(k, v)], (t, su))

    def features(self, t, a, b, trunk) -> dict[str, float]:
        keys = self.keys(a, b, trunk)
        out = {}
        for f in HISTORY_FEATURES:
            v, w = keys[f.key], f.window_s * 1_000_000
            starts = self.starts.get((f.key, v), [])
            starts = starts[bisect_left(starts, (t - w,)) : bisect_left(starts, (t,))]
            if f.stat == "count":
                out[f.name] = float(len(starts))
            elif f.stat in DISTINCT_COLUMN:
                col = 1 if DISTINCT_COLUMN[f.stat] == "a_number" else 2
                out[f.name] = float(len({s[col] for s in starts if s[col]}))
            elif f.stat == "since_prev":
                out[f.name] = (t - starts[-1][0]) / 1e6 if starts else SINCE_PREV_CAP_S
            else:
                ends = self.ends.get((f.key, v), [])
                ends = ends[bisect_left(ends, (t - w,)) : bisect_left(ends, (t,))]
                out[f.name] = sum(e[1] for e in ends) / len(ends) if ends else NO_ENDED
        return out


def _replay(seed: int, hours: int, max_late_s: float, n_ranges: int, n_calls: int = 1500) -> tuple[OnlineHistory, BruteForce]:
    """Calls arrive up to `max_late_s` late (so starts are inserted mid-list and queried after newer
    ones); their ends arrive at end time (some hours later). Every query is checked."""
    rng = random.Random(seed)
    ranges = [f"+4477{r:03d}" for r in range(n_ranges)]
    bursts = [h * 3600 for h in range(1, hours, 4)]
    events = []  # (arrival s, kind, payload)
    for i in range(n_calls):
        burst = rng.choice(bursts + [None])  # dense bursts: arrivals interleave
        start_s = rng.randrange(0, hours * 3600) if burst is None else burst + rng.randrange(0, 900)  # whole s: ties
        a = None if rng.random() < 0.05 else f"{rng.choice(ranges)}{rng.randrange(40):04d}"
        call = dict(operator="op", call_id=f"c{i}", start_time=T0 + timedelta(seconds=start_s), a_number=a,
                    b_number=f"+4930{rng.randrange(40):07d}", ingress_trunk=rng.choice(["t1", "t2", "t3", None]))
        length = rng.choice([5, 60, 600, 4 * 3600])  # some calls end hours after later calls start
        arrival = start_s + rng.uniform(0, max_late_s)
        events.append((arrival, "start", call))
        events.append((max(arrival, start_s + length + rng.uniform(0, 30)), "end", dict(
            call, answered=rng.random() < 0.5, ring_s=round(rng.uniform(0.5, 20), 3),
            end_time=T0 + timedelta(seconds=start_s + length))))
    events.sort(key=lambda e: e[0])

    hist, oracle = OnlineHistory({"op": "UTC"}), BruteForce()
    for n, (_, kind, ev) in enumerate(events):
        t = to_us(ev["start_time"])
        if kind == "start":
            want = oracle.features(t, ev["a_number"], ev["b_number"], ev["ingress_trunk"])
            if n % 3 == 0:  # recorded without a query first: the insert lands inside earlier query windows
                hist.observe_start(ev)
                got = want
            elif n % 2:
                got = hist.features(ev)
                hist.observe_start(ev)
            else:
                row = hist.score_start("op", ev["call_id"], ev["start_time"], ev["a_number"], ev["b_number"],
                                       ev["ingress_trunk"])
                got = dict(zip(FEATURE_NAMES, map(float, row), strict=True))
            for name, value in want.items():
                assert abs(got[name] - value) <= 1e-9, (ev["call_id"], name, got[name], value)
            oracle.start(t, ev["a_number"], ev["b_number"], ev["ingress_trunk"])
        else:
            hist.observe_end(ev)
            oracle.end(max(to_us(ev["end_time"]), t), int(is_short_unanswered(ev["answered"], ev["ring_s"])),
                       oracle.keys(ev["a_number"], ev["b_number"], ev["ingress_trunk"]))
    return hist, oracle


def test_calls_arriving_hours_late_are_counted_exactly() -> None:
    """Within 24 h nothing is evicted, so calls may arrive up to 2 h late and still count exactly."""
    _replay(seed=11, hours=20, max_late_s=7200, n_ranges=4)


def test_eviction_over_days_keeps_features_exact() -> None:
    """Over 60 h the lists are evicted and compacted under the sliding distinct counts."""
    hist, oracle = _replay(seed=5, hours=60, max_late_s=30, n_ranges=2, n_calls=2500)
    # only about the last 24 h (+ margin) of 60 h of starts are held
    assert hist.size() < 0.7 * sum(len(v) for v in oracle.starts.values())
