"""Call features known at call setup: the ONE home of the feature definitions.

A call's features are (1) its own setup fields and (2) the history of STRICTLY EARLIER calls
(start_time < this start_time; ties excluded) per A-number, A-range, B-number and ingress trunk,
over windows [t - w, t). Outcome fields of the call itself never appear. An earlier call's outcome
(answered, ring time) is used only through "end events": a call counts in an outcome share only if
it ENDED inside [t - w, t), i.e. strictly before this call started.

`call_features_sql()` renders these definitions as DuckDB SQL (batch); `online_features.py`
evaluates the same `HISTORY_FEATURES` / setup rules in Python (service). Both work on integer
microseconds so they agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

# Outcome rule used by history: an earlier call was "short-unanswered" if it was not answered and
# rang at most this long. (A label-like notion, but only of calls that already ended.)
SHORT_RING_S = 6.0
MAX_WINDOW_S = 24 * 3600  # largest window = how much history the batch reads / the service keeps
SINCE_PREV_CAP_S = float(MAX_WINDOW_S)  # "no earlier call within 24 h"
NO_ENDED = -1.0  # outcome share when no earlier call ended in the window

KEYS = ("a_number", "a_range", "b_number", "ingress_trunk")
# stat -> which column is counted distinctly ("distinct_b": distinct B-numbers, "distinct_a":
# distinct A-numbers, i.e. distinct A-suffixes within an A-range or towards a B-number)
DISTINCT_COLUMN = {"distinct_b": "b_number", "distinct_a": "a_number"}


@dataclass(frozen=True)
class HistoryFeature:
    key: str  # one of KEYS
    stat: str  # count | distinct_b | distinct_a | since_prev | su_share
    window_s: int

    @property
    def name(self) -> str:
        if self.stat == "since_prev":
            return f"{self.key}__since_prev_s"
        return f"{self.key}__{self.stat}_{_label(self.window_s)}"


def _label(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


M, H, D = 60, 3600, 86400


def _build() -> tuple[HistoryFeature, ...]:
    spec = {
        # key: {stat: windows}; kept modest: distinct counts over windows are the costly part
        "a_range": {"count": (M, 10 * M, H, D), "distinct_b": (10 * M, H), "distinct_a": (10 * M, H),
                    "since_prev": (D,), "su_share": (H, D)},
        "a_number": {"count": (M, H, D), "distinct_b": (H,), "since_prev": (D,), "su_share": (D,)},
        "b_number": {"count": (M, H, D), "distinct_a": (H,), "since_prev": (D,), "su_share": (D,)},
        "ingress_trunk": {"count": (M, H), "su_share": (H,)},
    }
    return tuple(HistoryFeature(k, s, w) for k, stats in spec.items() for s, ws in stats.items() for w in ws)


HISTORY_FEATURES: tuple[HistoryFeature, ...] = _build()

SETUP_FEATURES: tuple[str, ...] = (
    "hour_local", "weekday_local", "a_withheld", "a_cc", "b_cc", "same_country",
    "a_len", "b_len", "a_type", "b_type",
)

# The model's input, in order. Nothing here is an outcome of the call itself (see leakage guard).
FEATURE_NAMES: tuple[str, ...] = SETUP_FEATURES + tuple(f.name for f in HISTORY_FEATURES)

# Identity columns carried in call_features beside the inputs (never model inputs).
ID_COLUMNS = ("operator", "call_id", "partition_date", "start_time", "a_number", "a_range", "b_number", "ingress_trunk")

# Outcome fields of a call: never inputs (the leakage guard checks names and lineage against these).
OUTCOME_FIELDS = ("answer_time", "end_time", "answered", "disposition", "sip_code", "q850_cause",
                  "release_side", "duration_s", "ring_s", "egress_trunk")

# Coarse number types by E.164 prefix (longest prefix wins). 0 = other / fixed / unknown.
NUMBER_TYPE_CODES = {"other": 0, "mobile": 1, "premium": 2, "freephone": 3}
NUMBER_TYPE_PREFIXES = {
    "+447": "mobile",
    "+4915": "mobile", "+4916": "mobile", "+4917": "mobile",
    "+449": "premium", "+49900": "premium", "+49137": "premium",
    "+44800": "freephone", "+44808": "freephone", "+49800": "freephone", "+800": "freephone",
}


@lru_cache(maxsize=None)
def country_codes() -> dict[int, frozenset[str]]:
    """E.164 country calling codes by length (they are prefix-free), from phonenumbers' metadata."""
    out: dict[int, set[str]] = {1: set(), 2: set(), 3: set()}
    for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        s = str(cc)
        out[len(s)].add(s)
    return {k: frozenset(v) for k, v in out.items()}


def a_range_of(a_number: str | None) -> str | None:
    """The A-number without its last 4 digits (the block a flash-call OTP provider rotates in)."""
    if a_number is None or len(a_number) <= 5:
        return None
    return a_number[:-4]


def country_code_of(number: str | None) -> int:
    if not number or not number.startswith("+"):
        return 0
    for n in (1, 2, 3):
        if number[1 : 1 + n] in country_codes()[n]:
            return int(number[1 : 1 + n])
    return 0


def number_type_of(number: str | None) -> int:
    if not number:
        return 0
    for prefix in sorted(NUMBER_TYPE_PREFIXES, key=len, reverse=True):
        if number.startswith(prefix):
            return NUMBER_TYPE_CODES[NUMBER_TYPE_PREFIXES[prefix]]
    return 0


def is_short_unanswered(answered: bool | None, ring_s: float | None) -> bool:
    """History's outcome notion (of an ENDED earlier call). NULL ring counts as not short."""
    return (not answered) and ring_s is not None and ring_s <= SHORT_RING_S


# ---------------------------------------------------------------- SQL rendering

def _sql_country_code(col: str) -> str:
    cc = country_codes()
    parts = []
    for n in (1, 2, 3):
        vals = ", ".join(f"'{c}'" for c in sorted(cc[n]))
        parts.append(f"WHEN substr({col}, 2, {n}) IN ({vals}) THEN CAST(substr({col}, 2, {n}) AS INTEGER)")
    return f"(CASE WHEN {col} IS NULL OR NOT starts_with({col}, '+') THEN 0 {' '.join(parts)} ELSE 0 END)"


def _sql_number_type(col: str) -> str:
    whens = " ".join(
        f"WHEN starts_with({col}, '{p}') THEN {NUMBER_TYPE_CODES[NUMBER_TYPE_PREFIXES[p]]}"
        for p in sorted(NUMBER_TYPE_PREFIXES, key=len, reverse=True)
    )
    return f"(CASE WHEN {col} IS NULL THEN 0 {whens} ELSE 0 END)"


def _frame(w: int) -> str:
    return f"RANGE BETWEEN {w * 1_000_000} PRECEDING AND 1 PRECEDING"


def _start_window_expr(f: HistoryFeature) -> str:
    win = f"(PARTITION BY {f.key} ORDER BY t_us {_frame(f.window_s)})"
    if f.stat == "count":
        agg = f"count(*) OVER {win}"
        default = "0"
    elif f.stat in DISTINCT_COLUMN:
        agg = f"count(DISTINCT {DISTINCT_COLUMN[f.stat]}) OVER {win}"
        default = "0"
    elif f.stat == "since_prev":
        agg = f"coalesce((t_us - max(t_us) OVER {win}) / 1e6, {SINCE_PREV_CAP_S})"
        default = str(SINCE_PREV_CAP_S)
    else:
        raise ValueError(f.stat)
    return f"CAST(CASE WHEN {f.key} IS NULL THEN {default} ELSE {agg} END AS DOUBLE) AS \"{f.name}\""


def call_features_sql(day: str, timezones: dict[str, str], source: str = "mapped_cdrs") -> str:
    """One SELECT producing call_features for UTC day `day` ('YYYY-MM-DD').

    Reads `source` for the day and the day before (24 h of history crosses the day boundary and
    operators), computes every window over that, and keeps the calls of `day`.
    """
    tz_values = ", ".join(f"('{op}', '{tz}')" for op, tz in sorted(timezones.items())) or "('', 'UTC')"
    start_cols = [_start_window_expr(f) for f in HISTORY_FEATURES if f.stat != "su_share"]
    su_ctes, su_joins, su_cols = [], [], []
    for key in KEYS:
        feats = [f for f in HISTORY_FEATURES if f.key == key and f.stat == "su_share"]
        if not feats:
            continue
        sums = ",\n      ".join(
            f"sum(1 - is_q) OVER (PARTITION BY k ORDER BY ts {_frame(f.window_s)}) AS n_{i},\n"
            f"      sum(su) OVER (PARTITION BY k ORDER BY ts {_frame(f.window_s)}) AS s_{i}"
            for i, f in enumerate(feats)
        )
        shares = ", ".join(
            f"CASE WHEN coalesce(n_{i}, 0) = 0 THEN {NO_ENDED} ELSE s_{i} / n_{i} END AS \"{f.name}\""
            for i, f in enumerate(feats)
        )
        su_ctes.append(f"""
su_{key} AS (
  SELECT rid, {shares} FROM (
    SELECT rid, is_q,
      {sums}
    FROM (
      SELECT {key} AS k, t_us AS ts, 1 AS is_q, 0 AS su, rid FROM base WHERE {key} IS NOT NULL AND partition_date = DATE '{day}'
      UNION ALL
      SELECT {key} AS k, e_us AS ts, 0 AS is_q, CAST(su AS INTEGER) AS su, NULL AS rid FROM base WHERE {key} IS NOT NULL
    )
  ) WHERE is_q = 1
)""")
        su_joins.append(f"LEFT JOIN su_{key} USING (rid)")
        su_cols += [f"coalesce(su_{key}.\"{f.name}\", {NO_ENDED}) AS \"{f.name}\"" for f in feats]

    setup = f"""
    CAST(hour(local_ts) AS DOUBLE) AS hour_local,
    CAST(isodow(local_ts) AS DOUBLE) AS weekday_local,
    CAST(a_number IS NULL AS DOUBLE) AS a_withheld,
    CAST({_sql_country_code('a_number')} AS DOUBLE) AS a_cc,
    CAST({_sql_country_code('b_number')} AS DOUBLE) AS b_cc,
    CAST(a_number IS NOT NULL AND {_sql_country_code('a_number')} = {_sql_country_code('b_number')} AS DOUBLE) AS same_country,
    CAST(coalesce(length(a_number), 0) AS DOUBLE) AS a_len,
    CAST(coalesce(length(b_number), 0) AS DOUBLE) AS b_len,
    CAST({_sql_number_type('a_number')} AS DOUBLE) AS a_type,
    CAST({_sql_number_type('b_number')} AS DOUBLE) AS b_type"""
    ids = ", ".join(f"s.{c}" for c in ID_COLUMNS)
    ordered = ", ".join(f'"{c}"' for c in ID_COLUMNS + FEATURE_NAMES)
    return f"""
SELECT {ordered} FROM (
WITH tz(operator, tz) AS (VALUES {tz_values}),
base AS (
  SELECT row_number() OVER () AS rid, c.operator, c.call_id, c.partition_date, c.start_time,
    c.a_number, CASE WHEN length(c.a_number) > 5 THEN c.a_number[1:-5] END AS a_range,
    c.b_number, c.ingress_trunk,
    epoch_us(c.start_time) AS t_us, epoch_us(greatest(c.end_time, c.start_time)) AS e_us,
    (NOT coalesce(c.answered, false) AND c.ring_s IS NOT NULL AND c.ring_s <= {SHORT_RING_S}) AS su,
    timezone(coalesce(tz.tz, 'UTC'), c.start_time) AS local_ts
  FROM {source} c LEFT JOIN tz USING (operator)
  WHERE c.partition_date BETWEEN DATE '{day}' - 1 AND DATE '{day}'
),
starts AS (
  SELECT *
    {''.join(', ' + c for c in start_cols)}
  FROM base
){''.join(',' + c for c in su_ctes)}
SELECT {ids},
  {setup}
  {''.join(f', "{f.name}"' for f in HISTORY_FEATURES if f.stat != 'su_share')}
  {''.join(', ' + c for c in su_cols)}
FROM starts s {' '.join(su_joins)}
WHERE s.partition_date = DATE '{day}'
)
"""


def outcome_probe() -> list[str]:
    """Leakage probe of the SQL itself: flip the outcome fields (answered, ring, duration, release,
    disposition, codes) of a few calls in a small synthetic table and recompute. Those calls'
    features, and those of every call that started before they ended, must not change."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("""CREATE TABLE mapped_cdrs AS
        SELECT 'op' AS operator, 'c' || i AS call_id,
          TIMESTAMPTZ '2026-01-01 23:00:00+00' + to_seconds(i * 7) AS start_time,
          TIMESTAMPTZ '2026-01-01 23:00:00+00' + to_seconds(i * 7 + 1 + (i % 5) * 30) AS end_time,
          CAST(TIMESTAMPTZ '2026-01-01 23:00:00+00' + to_seconds(i * 7) AS DATE) AS partition_date,
          '+4477001' || (1000 + i % 3) || lpad(CAST(i % 17 AS VARCHAR), 4, '0') AS a_number,
          '+4930' || lpad(CAST(i % 11 AS VARCHAR), 7, '0') AS b_number, 't' || (i % 2) AS ingress_trunk,
          i % 3 = 0 AS answered, CAST(1 + i % 5 AS DOUBLE) AS ring_s, 10.0 AS duration_s,
          'caller' AS release_side, 'cancelled' AS disposition, 487 AS sip_code, 16 AS q850_cause,
          NULL::VARCHAR AS egress_trunk, NULL::TIMESTAMPTZ AS answer_time
        FROM range(1000) t(i)""")
    sql = call_features_sql("2026-01-02", {"op": "UTC"})
    before = {r[1]: r for r in con.execute(sql).fetchall()}
    targets = con.execute("""SELECT call_id, end_time FROM mapped_cdrs WHERE partition_date = DATE '2026-01-02'
        ORDER BY start_time LIMIT 5 OFFSET 100""").fetchall()
    con.execute(f"""UPDATE mapped_cdrs SET answered = NOT answered, ring_s = 100 - ring_s, duration_s = 0,
        release_side = 'callee', disposition = 'busy', sip_code = 486, q850_cause = 17, answer_time = start_time
        WHERE call_id IN ({', '.join(f"'{t[0]}'" for t in targets)})""")
    after = {r[1]: r for r in con.execute(sql).fetchall()}
    first_end = min(t[1] for t in targets)
    problems = []
    for cid, row in before.items():
        if (cid in {t[0] for t in targets} or row[3] <= first_end) and row != after.get(cid):
            problems.append(f"call {cid}: features changed when its own (or a not-yet-ended call's) outcome changed")
    con.close()
    return problems[:10]
