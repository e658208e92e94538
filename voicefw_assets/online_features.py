"""Online (per-call, pure Python) evaluation of the features defined in `features.py`.

The service feeds call starts (INVITE) and call ends in time order; `features(call)` then equals
the batch SQL for the same call to 1e-9: same definitions, same integer-microsecond arithmetic.
Queries filter by time (starts < t, ends < t), so an end that arrives "early" (a long call whose
end is later than another call's start) never leaks into that other call's features.

Speed (the service pays this on every call): per key value the starts and ends are sorted lists,
so a window count is two bisections; outcome shares read a running prefix sum of the ends;
distinct counts keep one sliding multiset per window that moves with the query time (amortized
O(1) per call when calls arrive in time order, and still exact when they do not). The feature
layout is compiled once from `HISTORY_FEATURES` into per-key plans that write into a list in
`FEATURE_NAMES` order.

Memory is bounded: per key, starts and ends older than the largest window (24 h) before the
newest observed time are evicted (a head offset, compacted in amortized O(1)).
"""

from __future__ import annotations

import csv
import json
from bisect import bisect_left
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from voicefw_assets.features import (
    DISTINCT_COLUMN,
    FEATURE_NAMES,
    HISTORY_FEATURES,
    KEYS,
    MAX_WINDOW_S,
    NO_ENDED,
    NUMBER_TYPE_PREFIXES,
    SETUP_FEATURES,
    SINCE_PREV_CAP_S,
    country_code_of,
    derive,
    is_short_unanswered,
    key_values,
    number_type_of,
)

STATE_FILE = "history.csv"  # one row per call in the last 24 h (bundle state)
STATE_META = "online_state.json"  # operator time zones, cut time
STATE_COLUMNS = ("operator", "call_id", "start_us", "end_us", "a_number", "b_number", "ingress_trunk", "answered", "ring_s")
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# country_code_of reads '+' and at most 3 digits, number_type_of the longest type prefix
_PREFIX_LEN = max(4, *(len(p) for p in NUMBER_TYPE_PREFIXES))
_COMPACT_MIN = 64  # evicted entries a key keeps (as a head offset) before its lists are compacted
_HORIZON_US = (MAX_WINDOW_S + 60) * _US  # kept behind the newest event: largest window + 60 s for late events

# `_setup_row` below writes this layout; fail at import if features.py changes it.
assert SETUP_FEATURES == ("hour_local", "a_withheld", "same_country", "a_len", "b_len", "a_type", "b_type"), SETUP_FEATURES
assert FEATURE_NAMES[: len(SETUP_FEATURES)] == SETUP_FEATURES
_N_PRIMITIVE = len(SETUP_FEATURES) + len(HISTORY_FEATURES)  # derived features follow (features.derive)


def to_us(ts: datetime) -> int:
    """UTC datetime -> integer epoch microseconds (exact; DuckDB's epoch_us)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


# ---------------------------------------------------------------- compiled feature layout
class _KeyPlan:
    """What to compute for one key (e.g. a_range), with output positions in FEATURE_NAMES."""

    def __init__(self, key: str) -> None:
        self.key = key
        feats = [f for f in HISTORY_FEATURES if f.key == key]
        pos = {f: FEATURE_NAMES.index(f.name) for f in feats}
        windows: dict[int, list] = {}  # window (µs) -> [count position, [(column, state index, position)]]
        self.n_states = 0
        for f in feats:
            if f.stat == "count":
                windows.setdefault(f.window_s * _US, [-1, []])[0] = pos[f]
            elif f.stat in DISTINCT_COLUMN:
                col = 0 if DISTINCT_COLUMN[f.stat] == "a_number" else 1
                windows.setdefault(f.window_s * _US, [-1, []])[1].append((col, self.n_states, pos[f]))
                self.n_states += 1
        self.windows = tuple((w, c, tuple(d)) for w, (c, d) in sorted(windows.items()))
        cols = {i: col for _, _, d in self.windows for col, i, _ in d}
        self.state_cols = tuple(cols[i] for i in range(self.n_states))  # by state index
        since = [f for f in feats if f.stat == "since_prev"]
        self.since = (since[0].window_s * _US, pos[since[0]]) if since else None
        self.shares = tuple((f.window_s * _US, pos[f]) for f in feats if f.stat == "su_share")
        self.keeps_a = 0 in self.state_cols
        self.keeps_b = 1 in self.state_cols


_PLANS = tuple(_KeyPlan(k) for k in KEYS)
for _f in HISTORY_FEATURES:
    if _f.stat not in ("count", "since_prev", "su_share") and _f.stat not in DISTINCT_COLUMN:
        raise ValueError(f"online_features cannot compute {_f.stat!r} ({_f.name})")


def _defaults() -> list[float]:
    """The history part of a row for a call with no earlier calls (what the SQL's coalesces give)."""
    out = []
    for name in FEATURE_NAMES[len(SETUP_FEATURES):_N_PRIMITIVE]:
        f = next(f for f in HISTORY_FEATURES if f.name == name)
        out.append(SINCE_PREV_CAP_S if f.stat == "since_prev" else NO_ENDED if f.stat == "su_share" else 0.0)
    return out


_HISTORY_DEFAULTS = _defaults()


# ---------------------------------------------------------------- per key value
class _Distinct:
    """Multiset of the values of starts[left:right]: the window of the last query, moved to the next."""

    __slots__ = ("col", "left", "right", "counts")

    def __init__(self, col: int, at: int) -> None:
        self.col, self.left, self.right, self.counts = col, at, at, {}

    def move(self, vals: list, lo: int, hi: int) -> int:
        """Slide to starts[lo:hi] and return the number of distinct non-null values in it.
        Adds come before removes, so a window that jumps back never removes what it lacks."""
        left, right, counts = self.left, self.right, self.counts
        if hi > right:
            _count_in(counts, vals[right:hi])
        if lo < left:
            _count_in(counts, vals[lo:left])
        if lo > left:
            _count_out(counts, vals[left:lo])
        if hi < right:
            _count_out(counts, vals[hi:right])
        self.left, self.right = lo, hi
        return len(counts)


def _count_in(counts: dict, values: list) -> None:
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1


def _count_out(counts: dict, values: list) -> None:
    for v in values:
        if v is not None:
            n = counts[v] - 1
            if n:
                counts[v] = n
            else:
                del counts[v]


class _KeyHistory:
    """Starts (sorted times, with A/B numbers where a distinct count needs them) and ends (sorted
    times, prefix sums of the short-unanswered flag) of one key value; entries before `head` /
    `ehead` are evicted."""

    __slots__ = ("owner", "kv", "plan", "st", "sa", "sb", "head", "et", "ec", "ehead", "dist")

    def __init__(self, owner: dict, kv: str, plan: _KeyPlan) -> None:
        self.owner, self.kv, self.plan = owner, kv, plan
        self.st: list[int] = []
        self.sa: list | None = [] if plan.keeps_a else None
        self.sb: list | None = [] if plan.keeps_b else None
        self.head = 0
        self.et: list[int] = []
        self.ec: list[int] = [0]  # ec[i] = short-unanswered ends among et[:i]
        self.ehead = 0
        self.dist: list[_Distinct] | None = None  # created at the first query that needs them

    def evaluate(self, t: int, out: list) -> None:
        """Write this key's history features for a call starting at t (strictly earlier calls)."""
        plan, st, head = self.plan, self.st, self.head
        hi = bisect_left(st, t, head)
        if plan.n_states and self.dist is None:
            self.dist = [_Distinct(col, hi) for col in plan.state_cols]
        for w, count_pos, distincts in plan.windows:
            lo = bisect_left(st, t - w, head, hi)
            if count_pos >= 0:
                out[count_pos] = hi - lo
            for col, i, pos in distincts:
                out[pos] = self.dist[i].move(self.sa if col == 0 else self.sb, lo, hi)
        if plan.since is not None and hi > head:
            w, pos = plan.since
            prev = st[hi - 1]
            if prev >= t - w:
                out[pos] = (t - prev) / 1e6
        et = self.et
        if plan.shares and len(et) > self.ehead:
            ec, ehead = self.ec, self.ehead
            ehi = bisect_left(et, t, ehead)
            for w, pos in plan.shares:
                elo = bisect_left(et, t - w, ehead, ehi)
                if ehi > elo:
                    out[pos] = (ec[ehi] - ec[elo]) / (ehi - elo)

    def add_start(self, t: int, a: str | None, b: str | None) -> None:
        st, sa, sb = self.st, self.sa, self.sb
        if not st or st[-1] <= t:
            st.append(t)
            if sa is not None:
                sa.append(a)
            if sb is not None:
                sb.append(b)
            return
        i = bisect_left(st, t + 1, self.head)  # after equal times: ties keep arrival order
        st.insert(i, t)
        if sa is not None:
            sa.insert(i, a)
        if sb is not None:
            sb.insert(i, b)
        for d in self.dist or ():  # keep each sliding window on the same starts
            if i < d.left:
                d.left += 1
                d.right += 1
            elif i < d.right:
                d.right += 1
                v = a if d.col == 0 else b
                if v is not None:
                    d.counts[v] = d.counts.get(v, 0) + 1

    def add_end(self, t: int, su: int) -> None:
        et, ec = self.et, self.ec
        if not et or et[-1] <= t:
            et.append(t)
            ec.append(ec[-1] + su)
            return
        i = bisect_left(et, t + 1, self.ehead)
        et.insert(i, t)
        ec.insert(i + 1, ec[i] + su)
        if su:
            for j in range(i + 2, len(ec)):
                ec[j] += su

    def evict_before(self, t: int) -> None:
        st, et = self.st, self.et
        if self.head < len(st) and st[self.head] < t:
            self.head = bisect_left(st, t, self.head)
        if self.ehead < len(et) and et[self.ehead] < t:
            self.ehead = bisect_left(et, t, self.ehead)
        if self.head >= _COMPACT_MIN and 2 * self.head >= len(st):
            self._compact_starts()
        if self.ehead >= _COMPACT_MIN and 2 * self.ehead >= len(et):
            k = self.ehead
            del et[:k], self.ec[:k]
            self.ehead = 0

    def _compact_starts(self) -> None:
        k = self.head
        for d in self.dist or ():
            d.move(self.sa if d.col == 0 else self.sb, max(d.left, k), max(d.right, k))
            d.left -= k
            d.right -= k
        del self.st[:k]
        if self.sa is not None:
            del self.sa[:k]
        if self.sb is not None:
            del self.sb[:k]
        self.head = 0

    def empty(self) -> bool:
        return self.head == len(self.st) and self.ehead == len(self.et)


# ---------------------------------------------------------------- the history
class OnlineHistory:
    """Incremental history of calls (per key of `features.KEY_DEFS`) for online features.

    Feed it `observe_start` at INVITE and `observe_end` at call end; ask `features(call)` before
    recording the call (or `score_start`, which does both with one set of lookups). Replaying the
    batch day's starts and ends gives the batch features exactly.
    """

    def __init__(self, timezones: dict[str, str] | None = None) -> None:
        self.timezones = dict(timezones or {})
        self._zones: dict[str, ZoneInfo] = {}
        self._maps: tuple[dict[str, _KeyHistory], ...] = tuple({} for _ in KEYS)
        self._open: dict[tuple[str, str], tuple] = {}  # started, end not seen: (t, key histories, (operator, call_id))
        self._queue: deque[tuple] = deque()  # (time, key histories, open key | None), oldest first: drives eviction
        self._watermark = 0  # newest time observed (µs)
        self._prefixes: dict[str, tuple[float, float]] = {}  # number prefix -> (country code, type)

    # ------------------------------------------------------------------ public interface
    @classmethod
    def from_bundle_state(cls, state_dir: Path) -> "OnlineHistory":
        """Rebuild the history saved in a model bundle (`state/`): the last 24 h of calls of the
        latest scored day, replayed as starts and ends. The service then keeps updating it."""
        state_dir = Path(state_dir)
        meta = json.loads((state_dir / STATE_META).read_text())
        hist = cls(meta["timezones"])
        with (state_dir / STATE_FILE).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: int(r["start_us"]))
        for r in rows:
            a = r["a_number"] or None
            hist._record(r["operator"], r["call_id"], int(r["start_us"]), a, r["b_number"] or None,
                         r["ingress_trunk"] or None)
        for r in sorted((r for r in rows if r["end_us"]), key=lambda r: int(r["end_us"])):
            ring = float(r["ring_s"]) if r["ring_s"] not in ("", None) else None
            hist._end(r["operator"], r["call_id"], int(r["end_us"]), r["answered"].lower() == "true", ring)
        return hist

    def features(self, call: dict) -> dict[str, float]:
        """Setup + history features of `call` (operator, call_id, start_time [UTC datetime], a_number,
        b_number [E.164], ingress_trunk) from strictly earlier calls only. Does NOT record the call."""
        row = self._row(call["operator"], call["start_time"], call.get("a_number"), call.get("b_number"),
                        call.get("ingress_trunk"))
        return dict(zip(FEATURE_NAMES, map(float, row)))

    def observe_start(self, call: dict) -> None:
        """Record a call's setup (same fields as `features`)."""
        self._record(call["operator"], call["call_id"], to_us(call["start_time"]), call.get("a_number"),
                     call.get("b_number"), call.get("ingress_trunk"))

    def score_start(self, operator: str, call_id: str, start: datetime, a_number: str | None,
                    b_number: str | None, ingress_trunk: str | None) -> list[float]:
        """`features` then `observe_start` in one pass (the service's path): the feature values in
        FEATURE_NAMES order (counts may be ints)."""
        return self._row(operator, start, a_number, b_number, ingress_trunk, call_id)

    def observe_end(self, end: dict) -> bool:
        """Record a call's end: operator, call_id, end_time (UTC datetime), answered, ring_s.
        Ends of calls never started here (or already ended or evicted) are ignored: returns False."""
        return self._end(end["operator"], end["call_id"], to_us(end["end_time"]), bool(end.get("answered")),
                         end.get("ring_s"))

    def setup_row(self, operator: str, start: datetime, a_number: str | None, b_number: str | None) -> list:
        """The setup part of a feature row (SETUP_FEATURES order), for stores that keep the history elsewhere."""
        return self._setup_row(operator, start, a_number, b_number)

    def size(self) -> int:
        """Number of (key, start) entries held: for memory monitoring."""
        return sum(len(h.st) - h.head for m in self._maps for h in m.values())

    # ------------------------------------------------------------------ internals
    def _row(self, operator: str, start: datetime, a: str | None, b: str | None, trunk: str | None,
             record_as: str | None = None) -> list:
        """The call's feature row; with `record_as` (its call_id) also record its start, reusing the lookups."""
        t = to_us(start)
        out = self._setup_row(operator, start, a, b)
        out += _HISTORY_DEFAULTS
        kvs = key_values(a, b, trunk)
        if record_as is None:
            for m, kv in zip(self._maps, kvs):
                if kv is not None:
                    h = m.get(kv)
                    if h is not None:
                        h.evaluate(t, out)
            out += derive(out)
            return out
        hists = []
        for plan, m, kv in zip(_PLANS, self._maps, kvs):
            if kv is not None:
                h = m.get(kv)
                if h is None:
                    h = m[kv] = _KeyHistory(m, kv, plan)
                else:
                    h.evaluate(t, out)
                h.add_start(t, a, b)
                hists.append(h)
        self._opened(operator, record_as, t, tuple(hists))
        out += derive(out)
        return out

    def _setup_row(self, operator: str, start: datetime, a: str | None, b: str | None) -> list:
        """The call's own setup fields, numerically encoded (no outcome field is read)."""
        zone = self._zones.get(operator)
        if zone is None:
            zone = self._zones[operator] = ZoneInfo(self.timezones.get(operator, "UTC"))
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        local = start.astimezone(zone)
        a_cc, a_len, a_type = self._number(a)
        b_cc, b_len, b_type = self._number(b)
        return [float(local.hour), float(a is None), float(a is not None and a_cc == b_cc), a_len, b_len, a_type, b_type]

    def _number(self, number: str | None) -> tuple[float, float, float]:
        """(country code, length, type) of a number. Code and type depend only on the first
        _PREFIX_LEN characters, so they are memoized per prefix (a small table)."""
        if not number:
            return (0.0, 0.0, 0.0)
        prefix = number[:_PREFIX_LEN]
        info = self._prefixes.get(prefix)
        if info is None:
            if len(self._prefixes) >= 100_000:
                self._prefixes.clear()
            info = self._prefixes[prefix] = (float(country_code_of(prefix)), float(number_type_of(prefix)))
        return (info[0], float(len(number)), info[1])

    def _record(self, operator: str, call_id: str, t: int, a: str | None, b: str | None, trunk: str | None) -> None:
        hists = []
        for plan, m, kv in zip(_PLANS, self._maps, key_values(a, b, trunk)):
            if kv is not None:
                h = m.get(kv)
                if h is None:
                    h = m[kv] = _KeyHistory(m, kv, plan)
                h.add_start(t, a, b)
                hists.append(h)
        self._opened(operator, call_id, t, tuple(hists))

    def _opened(self, operator: str, call_id: str, t: int, hists: tuple) -> None:
        record = (t, hists, (operator, call_id))
        self._open[record[2]] = record
        self._queue.append(record)
        if t > self._watermark:
            self._advance(t)

    def _end(self, operator: str, call_id: str, t_end: int, answered: bool, ring_s: float | None) -> bool:
        record = self._open.pop((operator, call_id), None)
        if record is None:
            return False
        t_start, hists, _ = record
        su = int(is_short_unanswered(answered, ring_s))
        t = max(t_end, t_start)
        for h in hists:
            h.add_end(t, su)
        self._queue.append((t, hists, None))
        if t_end > self._watermark:
            self._advance(t_end)
        return True

    def _advance(self, t: int) -> None:
        """Move the watermark and evict what fell out of the largest window (amortized O(1):
        `_queue` holds every start and end with the key histories it touched, oldest first)."""
        self._watermark = t
        cutoff = t - _HORIZON_US
        queue = self._queue
        if not queue or queue[0][0] >= cutoff:
            return
        open_calls = self._open
        while queue and queue[0][0] < cutoff:
            record = queue.popleft()
            _, hists, open_key = record
            if open_key is not None and open_calls.get(open_key) is record:  # never ended: forget it
                del open_calls[open_key]
            for h in hists:
                h.evict_before(cutoff)
                if h.empty() and h.owner.get(h.kv) is h:
                    del h.owner[h.kv]
