"""Online (per-call, pure Python) evaluation of the features defined in `features.py`.

The service feeds call starts (INVITE) and call ends in time order; `features(call)` then equals
the batch SQL for the same call to 1e-9: same definitions, same integer-microsecond arithmetic.
Queries filter by time (starts < t, ends < t), so an end that arrives "early" (a long call whose
end is later than another call's start) never leaks into that other call's features.

Memory is bounded: per key, starts and ends older than the largest window (24 h) before the
newest observed time are evicted.
"""

from __future__ import annotations

import csv
import json
from bisect import bisect_left, insort
from collections import defaultdict, deque
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from voicefw_assets.features import (
    DISTINCT_COLUMN,
    HISTORY_FEATURES,
    KEYS,
    MAX_WINDOW_S,
    NO_ENDED,
    SINCE_PREV_CAP_S,
    a_range_of,
    country_code_of,
    is_short_unanswered,
    number_type_of,
)

STATE_FILE = "history.csv"  # one row per call in the last 24 h (bundle state)
STATE_META = "online_state.json"  # operator time zones, cut time
STATE_COLUMNS = ("operator", "call_id", "start_us", "end_us", "a_number", "b_number", "ingress_trunk", "answered", "ring_s")
_US = 1_000_000


def to_us(ts: datetime) -> int:
    """UTC datetime -> integer epoch microseconds (exact; DuckDB's epoch_us)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def setup_features(call: dict, timezones: dict[str, str]) -> dict[str, float]:
    """The call's own setup fields, numerically encoded (no outcome field is read)."""
    start: datetime = call["start_time"]
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    local = start.astimezone(ZoneInfo(timezones.get(call["operator"], "UTC")))
    a, b = call.get("a_number"), call.get("b_number")
    a_cc, b_cc = country_code_of(a), country_code_of(b)
    return {
        "hour_local": float(local.hour),
        "weekday_local": float(local.isoweekday()),
        "a_withheld": float(a is None),
        "a_cc": float(a_cc),
        "b_cc": float(b_cc),
        "same_country": float(a is not None and a_cc == b_cc),
        "a_len": float(len(a) if a else 0),
        "b_len": float(len(b) if b else 0),
        "a_type": float(number_type_of(a)),
        "b_type": float(number_type_of(b)),
    }


def _keys_of(call: dict) -> dict[str, str | None]:
    return {
        "a_number": call.get("a_number"),
        "a_range": a_range_of(call.get("a_number")),
        "b_number": call.get("b_number"),
        "ingress_trunk": call.get("ingress_trunk"),
    }


class _KeyHistory:
    """Starts (sorted by time, with the A/B numbers) and ends (sorted, with the outcome flag) of one key value."""

    __slots__ = ("start_t", "start_a", "start_b", "end_t", "end_su")

    def __init__(self) -> None:
        self.start_t: list[int] = []
        self.start_a: list[str | None] = []
        self.start_b: list[str | None] = []
        self.end_t: list[int] = []
        self.end_su: list[int] = []

    def add_start(self, t: int, a: str | None, b: str | None) -> None:
        i = len(self.start_t) if not self.start_t or self.start_t[-1] <= t else bisect_left(self.start_t, t + 1)
        self.start_t.insert(i, t)
        self.start_a.insert(i, a)
        self.start_b.insert(i, b)

    def add_end(self, t: int, su: int) -> None:
        if not self.end_t or self.end_t[-1] <= t:
            self.end_t.append(t)
            self.end_su.append(su)
        else:
            i = bisect_left(self.end_t, t + 1)
            self.end_t.insert(i, t)
            self.end_su.insert(i, su)

    def evict_before(self, t: int) -> None:
        i = bisect_left(self.start_t, t)
        if i:
            del self.start_t[:i], self.start_a[:i], self.start_b[:i]
        j = bisect_left(self.end_t, t)
        if j:
            del self.end_t[:j], self.end_su[:j]

    def empty(self) -> bool:
        return not self.start_t and not self.end_t


class OnlineHistory:
    """Incremental history of calls (per A-number, A-range, B-number, ingress trunk) for online features.

    Feed it `observe_start` at INVITE and `observe_end` at call end; ask `features(call)` before
    recording the call. Replaying the batch day's starts and ends gives the batch features exactly.
    """

    def __init__(self, timezones: dict[str, str] | None = None) -> None:
        self.timezones = dict(timezones or {})
        self._hist: dict[str, dict[str, _KeyHistory]] = {k: defaultdict(_KeyHistory) for k in KEYS}
        self._open: dict[tuple[str, str], tuple[int, dict[str, str | None]]] = {}  # started, end not seen
        self._open_order: deque[tuple[int, tuple[str, str]]] = deque()
        self._watermark = 0  # newest time observed (µs)
        self._touched: deque[tuple[int, str, str]] = deque()

    # ------------------------------------------------------------------ public interface
    @classmethod
    def from_bundle_state(cls, state_dir: Path) -> "OnlineHistory":
        """Rebuild the history saved in a model bundle (`state/`): the last 24 h of calls of the
        latest scored day, replayed as starts and ends. The service then keeps updating it."""
        state_dir = Path(state_dir)
        meta = json.loads((state_dir / STATE_META).read_text())
        hist = cls(meta["timezones"])
        rows = []
        with (state_dir / STATE_FILE).open(newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append(r)
        rows.sort(key=lambda r: int(r["start_us"]))
        for r in rows:
            hist._start(r["operator"], r["call_id"], int(r["start_us"]), _keys_of({k: r[k] or None for k in ("a_number", "b_number", "ingress_trunk")}))
        for r in sorted((r for r in rows if r["end_us"]), key=lambda r: int(r["end_us"])):
            ring = float(r["ring_s"]) if r["ring_s"] not in ("", None) else None
            hist._end(r["operator"], r["call_id"], int(r["end_us"]), r["answered"].lower() == "true", ring)
        return hist

    def features(self, call: dict) -> dict[str, float]:
        """Setup + history features of `call` (operator, call_id, start_time [UTC datetime], a_number,
        b_number [E.164], ingress_trunk) from strictly earlier calls only. Does NOT record the call."""
        t = to_us(call["start_time"])
        out = setup_features(call, self.timezones)
        keys = _keys_of(call)
        for f in HISTORY_FEATURES:
            kv = keys[f.key]
            h = self._hist[f.key].get(kv) if kv is not None else None
            out[f.name] = self._stat(f.stat, f.window_s, h, t)
        return out

    def observe_start(self, call: dict) -> None:
        """Record a call's setup (same fields as `features`)."""
        self._start(call["operator"], call["call_id"], to_us(call["start_time"]), _keys_of(call))

    def observe_end(self, end: dict) -> None:
        """Record a call's end: operator, call_id, end_time (UTC datetime), answered, ring_s.
        Ends of calls never started here (or already evicted) are ignored."""
        self._end(end["operator"], end["call_id"], to_us(end["end_time"]), bool(end.get("answered")), end.get("ring_s"))

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _stat(stat: str, window_s: int, h: _KeyHistory | None, t: int) -> float:
        if stat == "su_share":
            if h is None:
                return NO_ENDED
            lo, hi = bisect_left(h.end_t, t - window_s * _US), bisect_left(h.end_t, t)
            n = hi - lo
            return NO_ENDED if n == 0 else sum(h.end_su[lo:hi]) / n
        if h is None:
            return SINCE_PREV_CAP_S if stat == "since_prev" else 0.0
        lo, hi = bisect_left(h.start_t, t - window_s * _US), bisect_left(h.start_t, t)
        if stat == "count":
            return float(hi - lo)
        if stat == "since_prev":
            return (t - h.start_t[hi - 1]) / 1e6 if hi > lo else SINCE_PREV_CAP_S
        col = h.start_b if DISTINCT_COLUMN[stat] == "b_number" else h.start_a
        return float(len({v for v in col[lo:hi] if v is not None}))

    def _start(self, operator: str, call_id: str, t: int, keys: dict[str, str | None]) -> None:
        for key, kv in keys.items():
            if kv is not None:
                self._hist[key][kv].add_start(t, keys["a_number"], keys["b_number"])
                self._touched.append((t, key, kv))
        self._open[(operator, call_id)] = (t, keys)
        self._open_order.append((t, (operator, call_id)))
        self._advance(t)

    def _end(self, operator: str, call_id: str, t_end: int, answered: bool, ring_s: float | None) -> None:
        opened = self._open.pop((operator, call_id), None)
        if opened is None:
            return
        t_start, keys = opened
        su = int(is_short_unanswered(answered, ring_s))
        for key, kv in keys.items():
            if kv is not None:
                self._hist[key][kv].add_end(max(t_end, t_start), su)
                self._touched.append((max(t_end, t_start), key, kv))
        self._advance(t_end)

    def _advance(self, t: int) -> None:
        """Move the watermark and evict what fell out of the largest window (amortized O(1):
        `_touched` lists every (time, key, value) added, oldest first)."""
        if t <= self._watermark:
            return
        self._watermark = t
        cutoff = t - MAX_WINDOW_S * _US - 60 * _US  # margin for slightly late events
        touched = self._touched
        while touched and touched[0][0] < cutoff:
            _, key, kv = touched.popleft()
            h = self._hist[key].get(kv)
            if h is not None:
                h.evict_before(cutoff)
                if h.empty():
                    del self._hist[key][kv]
        while self._open_order and self._open_order[0][0] < cutoff:
            _, ck = self._open_order.popleft()
            opened = self._open.get(ck)
            if opened is not None and opened[0] < cutoff:
                del self._open[ck]

    def size(self) -> int:
        """Number of (key, start) entries held: for memory monitoring."""
        return sum(len(h.start_t) for per_key in self._hist.values() for h in per_key.values())
