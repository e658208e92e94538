"""One canonical field -> SQL, from its FieldSpec in the operator config.

Each field has a raw text (trimmed; '' and `null_if` values are NULL) and a typed value (NULL when
absent or unparseable). Times: a strptime format in the operator's zone, epoch (exact to the
microsecond: parsed as a decimal, never through a float), or ISO-8601.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from voicefw_assets.ingest.sql import lit, one_of, q
from voicefw_assets.operators import FieldSpec, OperatorConfig

_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000}
_EPOCH_DECIMAL = {"s": "DECIMAL(18,6)", "ms": "DECIMAL(18,3)", "us": "DECIMAL(18,0)"}  # microsecond resolution, int64 inside
_MAX_EPOCH_S = 4_102_444_800  # 2100-01-01: beyond it an epoch value is a unit mistake, not a time


_RISKY = re.compile(r"(?i)\b(cast|to_timestamp|make_\w+|epoch\w*|strptime|date_\w+|interval|to_\w+|power|sqrt|ln|log\w*)\b|::|[-+*/%^]")


def config_sql(sql: str, cast: str) -> str:
    """An expression from an operator config, cast: NULL where it fails on a value (an overflow or a
    bad cast in one row must not fail the batch). `try()` costs ~1 µs a row, so it wraps only
    expressions that can raise: casts, arithmetic, time constructors (string literals ignored)."""
    expr = f"CAST(({sql}) AS {cast})"
    code = re.sub(r"'(?:[^']|'')*'", "''", sql)
    return f"try({expr})" if cast not in ("VARCHAR", "BOOLEAN") or _RISKY.search(code) else expr


def base_sql(spec: FieldSpec) -> str:
    """The field's source text (trimmed, '' and null_if values as NULL)."""
    if spec.value is not None:
        return lit(spec.value)
    if spec.sql is not None:
        expr = f"nullif(trim({config_sql(spec.sql, 'VARCHAR')}), '')"
    else:  # a column reference: test for spaces first (trim() copies every value; ~4x the cost)
        col = q(spec.column)
        expr = f"nullif(CASE WHEN starts_with({col}, ' ') OR ends_with({col}, ' ') THEN trim({col}) ELSE {col} END, '')"
    for v in list(spec.null_if) + (["0"] if spec.zero_is_null else []):
        expr = f"nullif({expr}, {lit(v.strip())})"
    return expr


def epoch_us_sql(raw: str, unit: str) -> str:
    """Epoch text in `unit` -> integer microseconds, exactly (whole numbers as integers, fractions as
    decimals, never a float)."""
    factor = 1_000_000 // _UNIT_DIVISOR[unit]
    fraction = f"CAST(round(CAST(try_cast({raw} AS {_EPOCH_DECIMAL[unit]}) AS DECIMAL(38, 6)) * {factor}) AS BIGINT)"
    digits = {"s": 12, "ms": 15, "us": 18}[unit]  # whole numbers that cannot overflow int64 microseconds
    return (f"CASE WHEN contains({raw}, '.') OR contains(lower({raw}), 'e') THEN {fraction}"
            f" WHEN length({raw}) <= {digits} THEN try_cast({raw} AS BIGINT) * {factor} END")


def time_pre_sql(raw: str, spec: FieldSpec, tz: str) -> str | None:
    """A helper column computed before the time itself (parsed once, referenced several times)."""
    if spec.time == "epoch":
        return epoch_us_sql(raw, spec.unit)
    if spec.time == "iso8601" and tz == "UTC":  # offset-less text is UTC too: one cast
        return f"try_cast({raw} AS TIMESTAMPTZ)"
    if spec.time == "iso8601":
        return (f"CASE WHEN regexp_matches({raw}, '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$') THEN try_cast({raw} AS TIMESTAMPTZ)"
                f" ELSE try(timezone({lit(tz)}, try_cast({raw} AS TIMESTAMP))) END")
    if spec.time is not None:
        return f"try_strptime({raw}, {lit(spec.time)})"
    return None


def time_sql(raw: str, pre: str, spec: FieldSpec, tz: str) -> str:
    """TIMESTAMPTZ from text `raw` and its helper column `pre`: a strptime format in the operator's
    zone, epoch (microseconds, NULL outside 1970..2100), or ISO-8601."""
    if spec.time == "epoch":
        return f"CASE WHEN {pre} BETWEEN 0 AND {_MAX_EPOCH_S * 1_000_000} THEN timezone('UTC', make_timestamp({pre})) END"
    if spec.time == "iso8601":  # 'infinity' casts to a timestamp: not a call's time
        return f"CASE WHEN isfinite({pre}) THEN {pre} END"
    return local_time_sql(pre, tz)


@lru_cache(maxsize=None)
def repeated_hour_keys(tz: str) -> tuple[int, ...]:
    """month * 100 + hour of every local wall-clock hour that ever repeats in `tz` (1990-2060),
    from the tz database: a cheap filter so the exact ICU check runs only near a fall-back."""
    zone = ZoneInfo(tz)
    keys = set()
    day = datetime(1990, 1, 1, tzinfo=timezone.utc)
    prev_day_off = day.astimezone(zone).utcoffset()
    while day.year < 2061:
        nxt = day + timedelta(days=1)
        off = nxt.astimezone(zone).utcoffset()
        if off != prev_day_off:  # a transition within this day: find it hour by hour
            t, prev = day, prev_day_off
            while t < nxt:
                t += timedelta(hours=1)
                o = t.astimezone(zone).utcoffset()
                if o < prev:  # clocks went back: local times in [t + o, t + prev) occur twice
                    local = (t + o).replace(tzinfo=None)
                    while local < (t + prev).replace(tzinfo=None):
                        keys.add(local.month * 100 + local.hour)
                        local += timedelta(minutes=15)
                prev = o
        day, prev_day_off = nxt, off
    return tuple(sorted(keys))


def repeated_local_time_sql(local: str, tz: str) -> str:
    """True where a wall time occurs twice (the hour repeated when clocks go back): ICU renders
    the instant one hour before its own reading to the same wall time."""
    keys = repeated_hour_keys(tz)
    if not keys:
        return "false"
    exact = f"timezone({lit(tz)}, timezone({lit(tz)}, {local}) - INTERVAL 1 HOUR) = {local}"
    return f"coalesce(CASE WHEN list_contains({list(keys)}, month({local}) * 100 + hour({local})) THEN {exact} END, false)"


def local_time_sql(local: str, tz: str) -> str:
    """Local wall time -> TIMESTAMPTZ. In the hour repeated when clocks go back it reads the first
    occurrence (daylight time, as Python's zoneinfo does with fold=0); ICU alone reads the second,
    which is one hour later. The mapping may then pick the other one (`resolve_repeated_hour`)."""
    if tz == "UTC":
        return f"timezone('UTC', {local})"
    late = f"timezone({lit(tz)}, {local})"
    return f"(CASE WHEN {repeated_local_time_sql(local, tz)} THEN {late} - INTERVAL 1 HOUR ELSE {late} END)"


def mapped_sql(raw: str, spec: FieldSpec) -> str:
    """A vocabulary value through the spec's `map` (case-insensitive), else its default or NULL."""
    if spec.map is None:
        return raw
    cases = " ".join(f"WHEN {lit(k.upper())} THEN {lit(v)}" for k, v in spec.map.items())
    default = lit(spec.default) if spec.default is not None else "NULL"
    return f"(CASE upper(coalesce({raw}, chr(0))) {cases} WHEN chr(0) THEN NULL ELSE {default} END)"  # one reference to raw


def seconds_sql(raw: str, spec: FieldSpec) -> str:
    return f"(try_cast({raw} AS DOUBLE) / {_UNIT_DIVISOR[spec.unit]})"


def integer_sql(raw: str) -> str:
    """An integer written as '487' or '487.0'; NULL for anything else (a fraction is not rounded)."""
    return f"CASE WHEN NOT contains({raw}, '.') OR regexp_full_match({raw}, '-?[0-9]+\\.0*') THEN try_cast({raw} AS INTEGER) END"


@dataclass
class FieldSql:
    """`raw` over the source columns; `pre` (optional) over the column <name>__raw; `typed` over
    the columns <name>__raw and <name>__pre. Number fields: typed is their international digits
    (E.164 once the lookup table confirms the length)."""

    raw: str
    pre: str | None
    typed: str


def field_sql(config: OperatorConfig) -> dict[str, FieldSql]:
    """Raw, helper and typed SQL for every canonical field the config defines."""
    from voicefw_assets.ingest.numbers import cleaned_sql, digits_sql

    out = {}
    for name, spec in config.fields.items():
        raw, col, pre_col = base_sql(spec), f"{name}__raw", f"{name}__pre"
        pre = None
        if name in ("start_time", "answer_time", "end_time"):
            pre = time_pre_sql(col, spec, config.timezone)
            typed = time_sql(col, pre_col, spec, config.timezone)
        elif name in ("a_number", "b_number"):
            pre, typed = cleaned_sql(col), digits_sql(pre_col, config.numbers)
        elif name in ("sip_code", "q850_cause"):
            typed = integer_sql(col)
        elif name in ("duration_s", "ring_s"):
            typed = seconds_sql(col, spec)
        else:
            typed = mapped_sql(col, spec)
        out[name] = FieldSql(raw, pre, typed)
    return out


def referenced_columns(config: OperatorConfig, available: list[str] | set[str] | None = None) -> set[str]:
    """Source columns the config reads: `column:` fields, "quoted" identifiers in its SQL, and
    (given the file's columns) any of them named bare in its SQL."""
    cols = set(config.source_columns())
    sqls = [s.sql for s in config.fields.values() if s.sql] + [r.sql for r in config.reject_if] + [config.start_hint_sql or ""]
    for sql in sqls:
        cols.update(re.findall(r'"([^"]+)"', sql))
        cols.update(c for c in available or () if re.search(rf"(?<![\w\"]){re.escape(c)}(?![\w\"])", sql))
    return cols
