"""Batch evaluation of the history features defined in `features.py` (what `call_features` writes).

The same definitions as `online_features.py`, evaluated for a whole UTC day at once: the calls of
the day and the day before come out of DuckDB as narrow integer arrays (start/end in µs, key ids),
and every window is two binary searches per call in a per-key sorted array -- numpy's
`searchsorted` over sorted queries costs ~0.1 s per 5 M calls, where each SQL ASOF lookup
re-sorted the day (measured: docs/measurements.md). The result goes back to DuckDB column by
column (one temp table per key, joined by position), where setup and derived features are SQL.

Exactness: integer µs everywhere; a key and its time are packed into one int64
(key id << 39 | time << 1 | short-unanswered bit), so "starts of this key in [t - w, t)" is
searchsorted(t) - searchsorted(t - w) in one sorted array. Distinct counts use runs of the same
(key, counted value) pair: a pair is present in [t - w, t) iff one of its runs (starts less than
w apart) began before t and ended at or after t - w, so distinct = run heads before t - run tails
before t - w, both prefix sums over the key's sorted starts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa

from voicefw_assets.features import (
    DISTINCT_COLUMN,
    HISTORY_FEATURES,
    KEY_BY_NAME,
    KEY_DEFS,
    MAX_WINDOW_S,
    NO_ENDED,
    SHORT_RING_S,
    FEATURE_NAMES,
    ID_COLUMNS,
    SINCE_PREV_CAP_S,
    derived_sql,
    number_setup,
    pair_columns,
    setup_sql,
)

_US = 1_000_000
_SHIFT = 39  # bits for (time << 1 | flag): 2^38 µs = 76 h of history relative to the earliest call read
_MAX_KEYS = 1 << (63 - _SHIFT)
TABLE_PREFIX = "_vf_hist_"
# DuckDB's memory limit while call_features runs: the history columns live in numpy beside it, and
# 10 M calls then peak at 2.6 GiB (2 GB: 3.0 GiB) at the same speed (docs/measurements.md)
HISTORY_DUCKDB_MEMORY = "1GB"


def _used_keys() -> list[str]:
    """Keys with features, plus the fields distinct counts count."""
    keys = {f.key for f in HISTORY_FEATURES}
    keys |= {DISTINCT_COLUMN[f.stat] for f in HISTORY_FEATURES if f.stat in DISTINCT_COLUMN}
    keys |= {KEY_BY_NAME[k].field for k in keys}
    return [k.name for k in KEY_DEFS if k.name in keys]


def _digits(col: str) -> str:
    """A '+<digits>' value as its digits when '+' || digits gives the very same string (then exact),
    0 for NULL, -1 for anything else. Reads `col` and `n_<col>` (its cast, computed once below)."""
    return f"(CASE WHEN {col} IS NULL THEN 0 WHEN n_{col} > 0 AND '+' || n_{col} = {col} THEN n_{col} ELSE -1 END)"


def _ids(values: np.ndarray) -> np.ndarray:
    """Dense int32 ids of nonzero int64 values (-1 for 0), by hashing (no sort)."""
    codes = pd.factorize(values)[0].astype(np.int32)
    codes[values == 0] = -1
    if codes.max(initial=-1) >= _MAX_KEYS:
        raise ValueError(f"more than {_MAX_KEYS:,} distinct key values in two days")
    return codes


def fetch_calls(con, day: str, source: str = "mapped_cdrs") -> dict:
    """The calls of `day` and the day before in rowid (scan) order: start/end µs, the
    short-unanswered flag, the day's rows, rowids, and a dense id per key (-1: none).

    Phone-number fields come out of SQL as their digits ('+<digits>' values only; exact), a text
    field (the trunk) as a hash of its few distinct values (checked collision-free). Keys computed from a
    number (its range, block, country) are computed from the digits in numpy (`Key.numeric`); the
    rare odd number (not '+<digits>') gets its keys from `Key.of`, the service's own function.
    pandas then factorizes the integers into dense ids (hashing, no sort)."""
    keys = [KEY_BY_NAME[k] for k in _used_keys()]
    fields = [f for f in ("a_number", "b_number", "ingress_trunk") if any(k.field == f for k in keys)]
    phone = {f: KEY_BY_NAME[f].phone for f in fields}
    where = f"c.partition_date BETWEEN DATE '{day}' - 1 AND DATE '{day}'"
    texts = [f for f in fields if not phone[f]]
    for f in texts:  # text values travel as a 63-bit hash (no join: the scan keeps rowid order); checked exact
        n, h = con.execute(f"SELECT count(DISTINCT c.{f}), count(DISTINCT hash(c.{f}) >> 1) FROM {source} c WHERE {where}").fetchone()
        if n != h:
            raise ValueError(f"{f}: two of its {n} values share a hash; cannot key them apart")
    inner = ", ".join(f"c.{f} AS {f}, TRY_CAST(c.{f}[2:] AS BIGINT) AS n_{f}" if phone[f] else
                      f"coalesce(CAST(hash(c.{f}) >> 1 AS BIGINT) + 1, 0) AS {f}" for f in fields)
    cols = ", ".join(f'{_digits(f)} AS "{f}"' if phone[f] else f for f in fields)
    d = con.execute(f"""
    SELECT rid, is_day, t, e, su, {cols} FROM (
      SELECT c.rowid AS rid, c.partition_date = DATE '{day}' AS is_day, epoch_us(c.start_time) AS t,
        epoch_us(greatest(c.end_time, c.start_time)) AS e,
        (NOT coalesce(c.answered, false) AND c.ring_s IS NOT NULL AND c.ring_s <= {SHORT_RING_S}) AS su, {inner}
      FROM {source} c WHERE {where})""").fetchnumpy()
    out: dict = {name: np.asarray(d[name]) for name in ("rid", "e", "su")}
    t = np.asarray(d["t"])
    out["t0"] = int(t.min()) if len(t) else 0
    out["t_rel"] = t - out["t0"]
    out["is_day"] = np.asarray(d["is_day"], dtype=bool)
    out["day"] = np.flatnonzero(out["is_day"])
    if len(t) > 1 and (np.diff(out["rid"]) <= 0).any():  # a scan keeps rowid order; the join by position relies on it
        raise ValueError("call rows did not come in rowid order")
    out["day_pos"] = (np.cumsum(out["is_day"]) - 1).astype(np.int32)  # a day row's position among the day's rows (rowid order)
    if len(t) and out["t_rel"].max() >= (1 << (_SHIFT - 1)):
        raise ValueError("more than 76 h between the first and the last call read")
    raw = {f: np.asarray(d[f], dtype=np.int64) for f in fields}
    odd_rows = {f: np.flatnonzero(raw[f] < 0) for f in fields if phone[f]}
    odd_values = _odd_values(con, source, out["rid"], odd_rows)
    for f in ("a_number", "b_number"):  # the setup features read from the numbers, for the day's calls
        day_of = {int(out["day_pos"][r]): v for r, v in zip(odd_rows.get(f, []), odd_values.get(f, [])) if out["is_day"][r]}
        for name, values in number_setup(raw[f][out["day"]], day_of).items():
            out[f"{f[0]}_{name}_"] = values
    for k in keys:
        v = raw[k.field]
        if phone[k.field]:
            v = k.numeric(np.maximum(v, 0)) if k.name != k.field else np.maximum(v, 0)
            rows = odd_rows[k.field]
            if len(rows):
                v = v.copy()
                v[rows] = _encode_odd([k.of(x) for x in odd_values[k.field]])
        out[k.name] = _ids(v)
    return out


def _odd_values(con, source: str, rid: np.ndarray, odd_rows: dict[str, np.ndarray]) -> dict[str, list]:
    """The text of numbers that are not '+<digits>' (rare: the mapping writes E.164), by field."""
    out = {}
    for f, rows in odd_rows.items():
        if len(rows):
            con.register("_vf_odd", pd.DataFrame({"rid": rid[rows], "pos": np.arange(len(rows))}))
            got = con.execute(f"SELECT o.pos, c.{f} FROM _vf_odd o JOIN {source} c ON c.rowid = o.rid ORDER BY o.pos").fetchall()
            con.unregister("_vf_odd")
            out[f] = [v for _, v in got]
    return out


def _encode_odd(values: list) -> np.ndarray:
    """Key values of odd numbers as integers: '+<digits>' values as their digits (so they meet the
    same key of ordinary numbers), other text as negative ids, None as 0."""
    codes: dict[str, int] = {}
    out = np.zeros(len(values), np.int64)
    for i, v in enumerate(values):
        if v is None:
            continue
        if v[:1] == "+" and v[1:].isdigit() and "+" + str(int(v[1:])) == v:
            out[i] = int(v[1:])
        else:
            out[i] = codes.setdefault(v, -(len(codes) + 1) - (1 << 40))
    return out


def _pair_ids(calls: dict, cols: tuple[str, ...]) -> np.ndarray:
    """Dense id of each call's (cols) combination; -1 where any is missing."""
    if len(cols) == 1:
        return calls[cols[0]]
    a, b = calls[cols[0]].astype(np.int64), calls[cols[1]].astype(np.int64)
    ok = (a >= 0) & (b >= 0)
    combo = np.where(ok, a * (b.max(initial=0) + 1) + b, -1)
    ids = pd.factorize(combo)[0].astype(np.int32)
    ids[~ok] = -1
    return ids


def _sort_by(ids: np.ndarray, t: np.ndarray, rows: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows ordered by (id, t), the packed id << shift | t << 1 values in that order), with few
    temporaries (10 M calls: every int64 array is 80 MB)."""
    packed = ids[rows].astype(np.int64)
    np.left_shift(packed, shift, out=packed)
    tr = t[rows]
    np.left_shift(tr, 1, out=tr)
    np.bitwise_or(packed, tr, out=packed)
    del tr
    o = np.argsort(packed)
    return rows[o], packed[o]


PARTS = 2  # a key's values split by id parity: independent halves, computed in two threads


def _part(ids: np.ndarray, part: int) -> np.ndarray:
    """Rows whose id (>= 0) falls in this part: no history crosses parts, so parts run apart."""
    return np.flatnonzero((ids >= 0) & (ids % PARTS == part))


def _runs(ids: np.ndarray, t: np.ndarray, windows: set[int], part: int, out: dict) -> None:
    """Per window w (µs), into out[w] = (head, tail): whether a call's previous / next start of the
    same pair is >= w away (or absent). Calls without a pair are neither. Writes only this part's rows."""
    order, packed = _sort_by(ids, t, _part(ids, part), _SHIFT)
    same = (packed[1:] >> _SHIFT) == (packed[:-1] >> _SHIFT)
    gap = np.diff(t[order])
    del packed
    for w in windows:
        head, tail = out[w]
        far = ~same | (gap >= w)  # between consecutive starts of the sorted pairs
        head[order[:1]] = True
        head[order[1:]] = far
        tail[order[:-1]] = far
        tail[order[-1:]] = True


def _key_part(calls: dict, key: str, part: int, out: dict[str, np.ndarray]) -> None:
    """The history features of one part of `key`'s values for the calls of the day, written into
    `out` (preallocated day columns, rowid order) at this part's rows."""
    feats = [f for f in HISTORY_FEATURES if f.key == key]
    t, kid = calls["t_rel"], calls[key]
    rows = _part(kid, part)
    order, starts = _sort_by(kid, t, rows, _SHIFT)
    of_day = calls["is_day"][order]
    where = calls["day_pos"][order[of_day]]  # the day's calls of this part, in (key, time) order:
    q = starts[of_day]  # sorted queries, so the binary searches stay in cache
    base = (q >> _SHIFT) << _SHIFT
    hi = np.searchsorted(starts, q, "left")
    lows: dict[int, np.ndarray] = {}

    def lo(w: int) -> np.ndarray:
        if w not in lows:
            lows[w] = np.searchsorted(starts, np.maximum(q - (w << 1), base), "left")
        return lows[w]

    for f in feats:
        w = f.window_s * _US
        if f.stat == "count":
            out[f.name][where] = hi - lo(w)
        elif f.stat == "since_prev":
            prev = starts[np.maximum(hi - 1, 0)]
            dt = (q - (prev & ((1 << _SHIFT) - 1) | base)) >> 1  # t - the latest earlier start of the key
            has = (hi > 0) & ((prev >> _SHIFT) == (q >> _SHIFT)) & (dt <= w)
            out[f.name][where] = np.where(has, dt, -1)
        elif f.stat in DISTINCT_COLUMN:
            head, tail = calls["runs"][pair_columns(f)][w]
            heads = np.concatenate([[0], np.cumsum(head[order], dtype=np.int32)])
            tails = np.concatenate([[0], np.cumsum(tail[order], dtype=np.int32)])
            out[f.name][where] = heads[hi] - tails[lo(w)]
            del heads, tails
        elif f.stat != "su_share":
            raise ValueError(f"batch_features cannot compute {f.stat!r} ({f.name})")
    del order, starts, lows
    shares = [f for f in feats if f.stat == "su_share"]
    if shares:
        horizon = int(t[calls["day"]].max()) + 1 if len(calls["day"]) else 0  # ends after the last start never count
        e = np.minimum(calls["e"][rows] - calls["t0"], horizon)
        np.left_shift(e, 1, out=e)
        e |= calls["su"][rows]
        ends = kid[rows].astype(np.int64)  # packed: id << 39 | end << 1 | short-unanswered
        del rows
        np.left_shift(ends, _SHIFT, out=ends)
        ends |= e
        del e
        ends.sort()
        csum = np.concatenate([[0], np.cumsum(ends & 1, dtype=np.int32)])
        ehi = np.searchsorted(ends, q, "left")
        for f in shares:
            elo = np.searchsorted(ends, np.maximum(q - ((f.window_s * _US) << 1), base), "left")
            out[f"{f.name}#num"][where] = csum[ehi] - csum[elo]
            out[f"{f.name}#den"][where] = ehi - elo


def _columns(key: str, n_day: int) -> dict[str, np.ndarray]:
    """The integer day columns `key_features` fills, with the values of a call without history:
    counts 0; since_prev -1 (none); su_share as numerator `#num` / denominator `#den`, 0 / 0."""
    out = {}
    for f in HISTORY_FEATURES:
        if f.key != key:
            continue
        if f.stat == "su_share":
            out[f"{f.name}#num"] = np.zeros(n_day, np.int32)
            out[f"{f.name}#den"] = np.zeros(n_day, np.int32)
        elif f.stat == "since_prev":
            out[f.name] = np.full(n_day, -1, np.int64)
        else:
            out[f.name] = np.zeros(n_day, np.int32)
    return out


def key_features(calls: dict, key: str, pool: ThreadPoolExecutor | None = None) -> dict[str, np.ndarray]:
    """Every history feature of `key` for the calls of the day, in rowid order, as integers
    (`_columns`; divided and scaled in SQL by `history_sql`: the same IEEE arithmetic as online).
    With a `pool`, the parts of the key's values are computed in parallel threads."""
    out = _columns(key, len(calls["day"]))
    _each_part(pool, lambda part: _key_part(calls, key, part, out))
    return out


def _each_part(pool: ThreadPoolExecutor | None, job) -> None:
    """job(part) for every part: in the pool's threads when there is one (results are written in place)."""
    list(pool.map(job, range(PARTS)) if pool is not None else map(job, range(PARTS)))


def history_sql(f) -> str:
    """The feature's DOUBLE value from the integers `key_features` writes (the SQL defaults of a
    call without the key or without history are these same expressions over 0 / -1)."""
    if f.stat == "su_share":
        return f'CASE WHEN "{f.name}#den" = 0 THEN {NO_ENDED} ELSE "{f.name}#num" / "{f.name}#den" END'
    if f.stat == "since_prev":
        return f'CASE WHEN "{f.name}" < 0 THEN {SINCE_PREV_CAP_S} ELSE "{f.name}" / 1e6 END'
    return f'CAST("{f.name}" AS INTEGER)'  # counts stay INTEGER (stored far cheaper than DOUBLE), whatever width numpy handed over


def pair_runs(calls: dict, pool: ThreadPoolExecutor | None = None) -> dict[tuple, dict]:
    """Run heads/tails of every (key, counted value) pair set, for all the windows its distinct
    counts use (shared: a_range, a_block and a_country all count distinct A-numbers)."""
    wins: dict[tuple, set] = {}
    for f in HISTORY_FEATURES:
        if f.stat in DISTINCT_COLUMN:
            wins.setdefault(pair_columns(f), set()).add(f.window_s * _US)
    out = {}
    for cols, ws in wins.items():
        ids = _pair_ids(calls, cols)
        flags = out[cols] = {w: (np.zeros(len(ids), bool), np.zeros(len(ids), bool)) for w in ws}
        _each_part(pool, lambda part, ids=ids, ws=ws, flags=flags: _runs(ids, calls["t_rel"], ws, part, flags))
    return out


def _narrow(values: np.ndarray) -> np.ndarray:
    """The smallest integer type that holds the column (DuckDB reads it as that type; SQL casts)."""
    if values.dtype.kind != "i" or not len(values):
        return values
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= values.min() and values.max() <= info.max:
            return values.astype(dtype)
    return values


def history_tables(con, day: str, source: str = "mapped_cdrs") -> list[str]:
    """Compute every history feature of `day`'s calls, rows in rowid order, and register them with
    `con` as Arrow tables (zero-copy views of the numpy columns, kept alive by the registration; one
    per key plus `<prefix>rows`: rowids and the numbers' setup values); returns their names. Each key
    is computed by two threads (halves of its values; numpy's sorts and searches release the GIL)."""
    calls = fetch_calls(con, day, source)
    tables = {"rows": {f"{TABLE_PREFIX}rid": calls["rid"][calls["day"]],
                       **{f"{p}_{n}_": _narrow(calls.pop(f"{p}_{n}_")) for p in "ab" for n in ("cc", "type", "len")}}}
    keys = sorted({f.key for f in HISTORY_FEATURES}, key=[k.name for k in KEY_DEFS].index)
    with ThreadPoolExecutor(max_workers=2) as pool:
        calls["runs"] = pair_runs(calls, pool)
        for key in keys:
            tables[key] = {name: _narrow(col) for name, col in key_features(calls, key, pool).items()}
    del calls
    names = []
    for key, columns in tables.items():
        con.register(f"{TABLE_PREFIX}{key}", pa.table(columns))
        names.append(f"{TABLE_PREFIX}{key}")
    return names


def call_features_select(con, day: str, timezones: dict[str, str], source: str = "mapped_cdrs") -> str:
    """Compute the history of `day` into tables registered with `con`, and return the SELECT producing
    call_features for the day (identity columns, setup, history, derived; ID_COLUMNS + FEATURE_NAMES
    order). Reads `source` for the day and the day before (24 h of history crosses the day boundary
    and operators). The history rows are in rowid order, so they meet the day's calls of `source`
    by POSITIONAL JOIN (a scan keeps rowid order; a mismatch raises) instead of a 5 M-row hash join."""
    tables = history_tables(con, day, source)
    tz_values = ", ".join(f"('{op}', '{tz}')" for op, tz in sorted(timezones.items())) or "('', 'UTC')"
    ordered = ", ".join(f'"{c}"' for c in ID_COLUMNS + FEATURE_NAMES)
    hist = ",\n    ".join(f'{history_sql(f)} AS "{f.name}"' for f in HISTORY_FEATURES)
    return f"""
SELECT {ordered} FROM (SELECT *{derived_sql()} FROM (
  WITH tz(operator, tz) AS (VALUES {tz_values}),
  c AS (SELECT rowid AS rid, operator, call_id, partition_date, start_time, a_number, b_number, ingress_trunk
        FROM {source} WHERE partition_date = DATE '{day}'),
  joined AS (SELECT * FROM c POSITIONAL JOIN {' POSITIONAL JOIN '.join(tables)})
  SELECT operator, call_id, partition_date, start_time, a_number, {KEY_BY_NAME['a_range'].sql('a_number')} AS a_range,
    b_number, ingress_trunk, {setup_sql()},
    {hist}
  FROM (SELECT j.*, timezone(coalesce(tz.tz, 'UTC'), j.start_time) AS local_ts
        FROM (SELECT *, CASE WHEN rid <> "{TABLE_PREFIX}rid" THEN error('call_features: rows out of step') END AS _check
              FROM joined) j LEFT JOIN tz ON tz.operator = j.operator)
))
"""


assert MAX_WINDOW_S * _US < (1 << (_SHIFT - 1)), "the largest window must fit the packed time"
