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
    pair_columns,
    setup_sql,
)

_US = 1_000_000
_SHIFT = 39  # bits for (time << 1 | flag): 2^38 µs = 76 h of history relative to the earliest call read
_MAX_KEYS = 1 << (63 - _SHIFT)
TABLE_PREFIX = "_vf_hist_"


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
    """The calls of `day` and the day before, ordered by (start, rowid): start/end µs, the
    short-unanswered flag, the day's rows, rowids, and a dense id per key (-1: none).

    Phone-number fields come out of SQL as their digits ('+<digits>' values only; exact), a text
    field (the trunk) as an id from a side table of its few distinct values. Keys computed from a
    number (its range, block, country) are computed from the digits in numpy (`Key.numeric`); the
    rare odd number (not '+<digits>') gets its keys from `Key.of`, the service's own function.
    pandas then factorizes the integers into dense ids (hashing, no sort)."""
    keys = [KEY_BY_NAME[k] for k in _used_keys()]
    fields = [f for f in ("a_number", "b_number", "ingress_trunk") if any(k.field == f for k in keys)]
    phone = {f: KEY_BY_NAME[f].phone for f in fields}
    where = f"c.partition_date BETWEEN DATE '{day}' - 1 AND DATE '{day}'"
    texts = [f for f in fields if not phone[f]]
    side = "".join(f""" LEFT JOIN (SELECT v, row_number() OVER (ORDER BY v) AS id FROM
        (SELECT DISTINCT c.{f} AS v FROM {source} c WHERE {where} AND c.{f} IS NOT NULL)) s_{f} ON s_{f}.v = c.{f}"""
                   for f in texts)
    inner = ", ".join(f"c.{f} AS {f}, TRY_CAST(c.{f}[2:] AS BIGINT) AS n_{f}" if phone[f] else f"coalesce(s_{f}.id, 0) AS {f}"
                      for f in fields)
    cols = ", ".join(f'{_digits(f)} AS "{f}"' if phone[f] else f for f in fields)
    d = con.execute(f"""
    SELECT rid, is_day, t, e, su, {cols} FROM (
      SELECT c.rowid AS rid, c.partition_date = DATE '{day}' AS is_day, epoch_us(c.start_time) AS t,
        epoch_us(greatest(c.end_time, c.start_time)) AS e,
        (NOT coalesce(c.answered, false) AND c.ring_s IS NOT NULL AND c.ring_s <= {SHORT_RING_S}) AS su, {inner}
      FROM {source} c{side} WHERE {where})
    ORDER BY t, rid""").fetchnumpy()
    out: dict = {name: np.asarray(d[name]) for name in ("rid", "e", "su")}
    t = np.asarray(d["t"])
    out["t0"] = int(t.min()) if len(t) else 0
    out["t_rel"] = t - out["t0"]
    out["is_day"] = np.asarray(d["is_day"], dtype=bool)
    out["day"] = np.flatnonzero(out["is_day"])
    out["day_pos"] = np.cumsum(out["is_day"]) - 1  # a day row's position among the day's rows
    if len(t) and out["t_rel"].max() >= (1 << (_SHIFT - 1)):
        raise ValueError("more than 76 h between the first and the last call read")
    raw = {f: np.asarray(d[f], dtype=np.int64) for f in fields}
    odd_rows = {f: np.flatnonzero(raw[f] < 0) for f in fields if phone[f]}
    odd_values = _odd_values(con, source, out["rid"], odd_rows)
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


def _runs(ids: np.ndarray, t: np.ndarray, windows: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per window w (µs): (head, tail) flags per call -- its previous / next start of the same pair
    is >= w away (or absent). Calls without a pair are neither."""
    idx = np.flatnonzero(ids >= 0)
    order = idx[np.argsort((ids[idx].astype(np.int64) << (_SHIFT - 1)) | t[idx])]
    ts, same = t[order], ids[order[1:]] == ids[order[:-1]]
    gap = np.diff(ts)
    out = {}
    for w in windows:
        far = ~same | (gap >= w)  # between consecutive starts of the sorted pairs
        head = np.zeros(len(ids), bool)
        tail = np.zeros(len(ids), bool)
        head[order] = np.concatenate([[True], far])
        tail[order] = np.concatenate([far, [True]])
        out[w] = (head, tail)
    return out


def key_features(calls: dict, key: str) -> dict[str, np.ndarray]:
    """Every history feature of `key` for the calls of the day (in `calls` order), as SQL's
    coalesced defaults where the call has no such key or no history."""
    feats = [f for f in HISTORY_FEATURES if f.key == key]
    day, t, t0 = calls["day"], calls["t_rel"], calls["t0"]
    kid = calls[key].astype(np.int64)
    valid = np.flatnonzero(kid >= 0)
    order = valid[np.argsort((kid[valid] << _SHIFT) | (t[valid] << 1))]
    starts = (kid[order] << _SHIFT) | (t[order] << 1)
    of_day = calls["is_day"][order]
    qday = order[of_day]  # the day's calls with this key, in (key, time) order: sorted queries search fast
    q = starts[of_day]
    base = (q >> _SHIFT) << _SHIFT
    hi = np.searchsorted(starts, q, "left")
    where = calls["day_pos"][qday]
    out: dict[str, np.ndarray] = {}

    def put(name: str, values: np.ndarray, default: float) -> None:
        col = np.full(len(day), default, dtype=np.float64)
        col[where] = values
        out[name] = col

    lows: dict[int, np.ndarray] = {}

    def lo(w: int) -> np.ndarray:
        if w not in lows:
            lows[w] = np.searchsorted(starts, np.maximum(q - (w << 1), base), "left")
        return lows[w]

    runs: dict[tuple, dict] = {}
    for f in feats:
        w = f.window_s * _US
        if f.stat == "count":
            put(f.name, hi - lo(w), 0.0)
        elif f.stat == "since_prev":
            prev = starts[np.maximum(hi - 1, 0)]
            dt = t[qday] - ((prev & ((1 << _SHIFT) - 1)) >> 1)
            has = (hi > 0) & ((prev >> _SHIFT) == kid[qday]) & (dt <= w)
            put(f.name, np.where(has, dt / 1e6, SINCE_PREV_CAP_S), SINCE_PREV_CAP_S)
        elif f.stat in DISTINCT_COLUMN:
            cols = pair_columns(f)
            if cols not in runs:
                wins = {g.window_s * _US for g in feats if g.stat in DISTINCT_COLUMN and pair_columns(g) == cols}
                runs[cols] = _runs(_pair_ids(calls, cols), t, wins)
            head, tail = runs[cols][w]
            heads = np.concatenate([[0], np.cumsum(head[order])])
            tails = np.concatenate([[0], np.cumsum(tail[order])])
            put(f.name, heads[hi] - tails[lo(w)], 0.0)
        elif f.stat != "su_share":
            raise ValueError(f"batch_features cannot compute {f.stat!r} ({f.name})")
    shares = [f for f in feats if f.stat == "su_share"]
    if shares:
        horizon = int(t[day].max()) + 1 if len(day) else 0  # ends after the last start never count
        e = np.minimum(calls["e"][valid] - t0, horizon)
        ends = np.sort((kid[valid] << _SHIFT) | (e << 1) | calls["su"][valid].astype(np.int64))
        csum = np.concatenate([[0], np.cumsum(ends & 1)])
        ehi = np.searchsorted(ends, q, "left")
        for f in shares:
            elo = np.searchsorted(ends, np.maximum(q - ((f.window_s * _US) << 1), base), "left")
            n = ehi - elo
            put(f.name, np.where(n > 0, (csum[ehi] - csum[elo]) / np.maximum(n, 1), NO_ENDED), NO_ENDED)
    return out


def history_tables(con, day: str, source: str = "mapped_cdrs") -> list[str]:
    """Compute every history feature of `day`'s calls into temp tables (one per key, rows in
    (start, rowid) order) plus `_vf_hist_rows` (the rowids in that order); returns their names for
    a POSITIONAL JOIN. Keys are computed two at a time (numpy's sorts and searches release the
    GIL) and written to DuckDB one at a time as they finish."""
    calls = fetch_calls(con, day, source)
    names = []
    rows = pd.DataFrame({"rid": calls["rid"][calls["day"]]})
    con.register("_vf_rows_df", rows)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {TABLE_PREFIX}rows AS SELECT * FROM _vf_rows_df")
    con.unregister("_vf_rows_df")
    names.append(f"{TABLE_PREFIX}rows")
    keys = sorted({f.key for f in HISTORY_FEATURES}, key=[k.name for k in KEY_DEFS].index)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for key, result in zip(keys, pool.map(lambda k: key_features(calls, k), keys)):
            frame = pd.DataFrame(result)
            del result
            con.register("_vf_key_df", frame)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {TABLE_PREFIX}{key} AS SELECT * FROM _vf_key_df")
            con.unregister("_vf_key_df")
            names.append(f"{TABLE_PREFIX}{key}")
            del frame
    return names


def call_features_select(con, day: str, timezones: dict[str, str], source: str = "mapped_cdrs") -> str:
    """Compute the history of `day` into temp tables of `con`, and return the SELECT producing
    call_features for the day (identity columns, setup, history, derived; ID_COLUMNS + FEATURE_NAMES
    order). Reads `source` for the day and the day before (24 h of history crosses the day boundary
    and operators); `source` must be a table (its rowid joins the history back)."""
    tables = history_tables(con, day, source)
    tz_values = ", ".join(f"('{op}', '{tz}')" for op, tz in sorted(timezones.items())) or "('', 'UTC')"
    ordered = ", ".join(f'"{c}"' for c in ID_COLUMNS + FEATURE_NAMES)
    return f"""
SELECT {ordered} FROM (SELECT *{derived_sql()} FROM (
  WITH tz(operator, tz) AS (VALUES {tz_values}),
  h AS (SELECT * FROM {' POSITIONAL JOIN '.join(tables)})
  SELECT operator, call_id, partition_date, start_time, a_number, {KEY_BY_NAME['a_range'].sql('a_number')} AS a_range,
    b_number, ingress_trunk, {setup_sql()}, * EXCLUDE (rid, operator, call_id, partition_date, start_time, a_number,
    b_number, ingress_trunk, local_ts)
  FROM (SELECT c.operator, c.call_id, c.partition_date, c.start_time, c.a_number, c.b_number, c.ingress_trunk,
          timezone(coalesce(tz.tz, 'UTC'), c.start_time) AS local_ts, h.*
        FROM h JOIN {source} c ON c.rowid = h.rid LEFT JOIN tz ON tz.operator = c.operator)
))
"""


assert MAX_WINDOW_S * _US < (1 << (_SHIFT - 1)), "the largest window must fit the packed time"
