"""Call features known at call setup: the ONE home of the feature definitions.

A call's features are (1) its own setup fields and (2) the history of STRICTLY EARLIER calls
(start_time < this start_time; ties excluded) per A-number, A-range, A-block, B-number and ingress trunk,
over windows [t - w, t). Outcome fields of the call itself never appear. An earlier call's outcome
(answered, ring time) is used only through "end events": a call counts in an outcome share only if
it ENDED inside [t - w, t), i.e. strictly before this call started.

`batch_features.py` evaluates these definitions for a day of calls (numpy over DuckDB arrays; setup
and derived features as SQL rendered here); `online_features.py` evaluates the same definitions
call by call in Python (service). Both work on integer microseconds so they agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import phonenumbers

# Outcome rule used by history: an earlier call was "short-unanswered" if it was not answered and
# rang at most this long. (A label-like notion, but only of calls that already ended.)
SHORT_RING_S = 6.0
MAX_WINDOW_S = 24 * 3600  # largest window = how much history the batch reads / the service keeps
SINCE_PREV_CAP_S = float(MAX_WINDOW_S)  # "no earlier call within 24 h"
NO_ENDED = -1.0  # outcome share when no earlier call ended in the window
SETUP_FIELDS = ("a_number", "b_number", "ingress_trunk")  # the call's fields a history key may be computed from


# ---------------------------------------------------------------- history keys
@dataclass(frozen=True)
class Key:
    """A history key: ONE function of one setup field, rendered as SQL (`sql`) and Python (`of`).

    drop_last: the number without its last k characters (a range of numbers); country: the number's
    E.164 country calling code as '+<cc>'. A key value of None (no number, too short, unknown
    country) means the call has no history under that key."""

    name: str
    field: str  # one of SETUP_FIELDS
    drop_last: int = 0
    country: bool = False
    phone: bool = True  # values are '+<digits>' strings (the batch encodes them as integers)

    def of(self, value: str | None) -> str | None:
        if value is None:
            return None
        if self.country:
            cc = country_code_of(value)
            return f"+{cc}" if cc else None
        if self.drop_last:
            return _a_prefix(value, self.drop_last)
        return value

    def numeric(self, digits: np.ndarray) -> np.ndarray:
        """`of` for many '+<digits>' numbers at once, given as their digits (int64 > 0), returning the
        key's own '+<digits>' value as digits (0: None). For the batch, which sorts integers."""
        if self.country:
            n = np.asarray(digits, dtype=np.int64)
            length = np.floor(np.log10(np.maximum(n, 1))).astype(np.int64) + 1
            cc = np.zeros(len(n), np.int64)
            for width in (3, 2, 1):  # the shortest matching prefix wins, as in country_code_of
                head = n // 10 ** np.maximum(length - width, 0)
                known = np.array(sorted(int(c) for c in country_codes()[width]), dtype=np.int64)
                cc = np.where((length >= width) & np.isin(head, known), head, cc)
            return cc
        if self.drop_last:
            return np.where(digits >= 10**self.drop_last, digits // 10**self.drop_last, 0)
        return np.asarray(digits, dtype=np.int64)

    def sql(self, col: str) -> str:
        if self.country:
            return f"(CASE WHEN {_sql_country_code(col)} > 0 THEN '+' || {_sql_country_code(col)} END)"
        if self.drop_last:
            return f"(CASE WHEN length({col}) > {self.drop_last + 1} THEN {col}[1:-{self.drop_last + 1}] END)"
        return col


KEY_DEFS: tuple[Key, ...] = (
    Key("a_number", "a_number"),
    Key("a_range", "a_number", drop_last=4),  # the block a flash-call OTP provider rotates in
    Key("a_block", "a_number", drop_last=6),  # campaigns that rotate 5-6 trailing digits
    Key("a_country", "a_number", country=True),  # where the calls claim to come from
    Key("b_number", "b_number"),
    Key("ingress_trunk", "ingress_trunk", phone=False),
)
KEYS = tuple(k.name for k in KEY_DEFS)
KEY_BY_NAME = {k.name: k for k in KEY_DEFS}
# stat -> which setup field is counted distinctly ("distinct_b": distinct B-numbers, "distinct_a":
# distinct A-numbers, i.e. distinct A-suffixes within an A-range or towards a B-number)
DISTINCT_COLUMN = {"distinct_b": "b_number", "distinct_a": "a_number"}


def key_values(a_number: str | None, b_number: str | None, ingress_trunk: str | None) -> tuple:
    """A call's value of each key, in KEYS order (None: no history under that key)."""
    fields = {"a_number": a_number, "b_number": b_number, "ingress_trunk": ingress_trunk}
    return tuple(k.of(fields[k.field]) for k in KEY_DEFS)


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
        # key: {stat: windows}; pruned by measurement (docs/measurements.md): windows that added
        # nothing over their neighbours cost sorting and storage only
        "a_range": {"count": (M, 10 * M, D), "distinct_b": (10 * M,), "distinct_a": (10 * M,), "since_prev": (D,),
                    "su_share": (H, D)},
        "a_number": {"count": (D,), "distinct_b": (H,), "since_prev": (D,), "su_share": (D,)},
        "b_number": {"count": (D,), "since_prev": (D,), "su_share": (D,)},
        "ingress_trunk": {"count": (M, 10 * M, H, D), "su_share": (M, 10 * M, H, D)},
        "a_block": {"count": (10 * M, H, D), "distinct_a": (10 * M, H), "su_share": (H, D)},
        "a_country": {"count": (10 * M, D), "distinct_a": (10 * M,), "su_share": (10 * M, H, D)},
    }
    return tuple(HistoryFeature(k, s, w) for k, stats in spec.items() for s, ws in stats.items() for w in ws)


HISTORY_FEATURES: tuple[HistoryFeature, ...] = _build()

# The call's own setup fields. Not the raw country codes (a model memorizes where training campaigns
# came from; `a_country` history says what a country's calls do now) nor the weekday (a few training
# days cannot teach it).
SETUP_FEATURES: tuple[str, ...] = ("hour_local", "a_withheld", "same_country", "a_len", "b_len", "a_type", "b_type")


# ---------------------------------------------------------------- derived features
class Expr:
    """A tiny arithmetic expression over a call's setup and history feature values: ONE definition
    rendered as a DuckDB SQL expression (`sql`) and as Python source (`py`, compiled into `derive`).
    Only +, -, *, guarded division, ln, greatest/least and comparisons: IEEE double arithmetic that
    DuckDB and CPython evaluate identically."""

    def sql(self) -> str:
        raise NotImplementedError

    def py(self, index: dict[str, int]) -> str:
        raise NotImplementedError

    def refs(self) -> set[str]:
        raise NotImplementedError

    def __add__(self, other) -> "Expr":
        return Op("+", (self, _x(other)))

    def __radd__(self, other) -> "Expr":
        return Op("+", (_x(other), self))

    def __sub__(self, other) -> "Expr":
        return Op("-", (self, _x(other)))

    def __mul__(self, other) -> "Expr":
        return Op("*", (self, _x(other)))

    def __rmul__(self, other) -> "Expr":
        return Op("*", (_x(other), self))


@dataclass(frozen=True)
class Ref(Expr):
    name: str

    def sql(self) -> str:
        return f'"{self.name}"'

    def py(self, index: dict[str, int]) -> str:
        return f"r[{index[self.name]}]"

    def refs(self) -> set[str]:
        return {self.name}


@dataclass(frozen=True)
class Num(Expr):
    value: float

    def sql(self) -> str:
        return f"CAST({float(self.value)!r} AS DOUBLE)"

    def py(self, index: dict[str, int]) -> str:
        return repr(float(self.value))

    def refs(self) -> set[str]:
        return set()


_SQL_FN = {"ln": "ln({0})", "max": "greatest({0}, {1})", "min": "least({0}, {1})",
           "div": "(CASE WHEN {1} = 0 THEN {2} ELSE {0} / {1} END)", "gt": "(CASE WHEN {0} > {1} THEN 1.0 ELSE 0.0 END)",
           "ge": "(CASE WHEN {0} >= {1} THEN 1.0 ELSE 0.0 END)", "if": "(CASE WHEN {0} > 0 THEN {1} ELSE {2} END)"}
_PY_FN = {"ln": "_ln({0})", "max": "max({0}, {1})", "min": "min({0}, {1})",
          "div": "(({0}) / ({1}) if ({1}) != 0 else {2})", "gt": "(1.0 if ({0}) > ({1}) else 0.0)",
          "ge": "(1.0 if ({0}) >= ({1}) else 0.0)", "if": "(({1}) if ({0}) > 0 else ({2}))"}


@dataclass(frozen=True)
class Op(Expr):
    op: str
    args: tuple

    def sql(self) -> str:
        a = [x.sql() for x in self.args]
        return f"({a[0]} {self.op} {a[1]})" if self.op in "+-*" else _SQL_FN[self.op].format(*a)

    def py(self, index: dict[str, int]) -> str:
        a = [x.py(index) for x in self.args]
        return f"({a[0]} {self.op} {a[1]})" if self.op in "+-*" else _PY_FN[self.op].format(*a)

    def refs(self) -> set[str]:
        return set().union(*(x.refs() for x in self.args))


def _x(v) -> Expr:
    return v if isinstance(v, Expr) else Num(float(v))


def ratio(a, b, default: float = 0.0) -> Expr:
    """a / b, or `default` where b is 0."""
    return Op("div", (_x(a), _x(b), _x(default)))


def ln(a) -> Expr:
    """Natural log; only of expressions that are > 0 by construction (e.g. (x + 1) / (y + 1), x, y >= 0)."""
    return Op("ln", (_x(a),))


def if_positive(cond, a, b) -> Expr:
    """a where cond > 0, else b."""
    return Op("if", (_x(cond), _x(a), _x(b)))


def greatest(a, b) -> Expr:
    return Op("max", (_x(a), _x(b)))


@dataclass(frozen=True)
class Derived:
    name: str
    expr: Expr
    why: str


def _share(key: str, stat: str, window: str) -> Expr:
    """distinct values / calls of a key in a window (1.0: every call a new number), 0 without calls."""
    return ratio(Ref(f"{key}__{stat}_{window}"), Ref(f"{key}__count_{window}"))


def _rate_ratio(key: str, short: str, short_s: int, long: str, long_s: int) -> Expr:
    """ln of the key's call rate in the short window over its rate in the long window (+1 smoothing on
    counts scaled to the short window): > 0 is a burst against the key's own baseline, at any volume."""
    return ln(ratio(Ref(f"{key}__count_{short}") + 1, Ref(f"{key}__count_{long}") * (short_s / long_s) + 1))


def _excess(key: str, short: str, long: str) -> Expr:
    """How much higher the key's short-unanswered share of recently ENDED calls is than over its
    longer window (0 where either has no ended call): an outcome wave against the key's own baseline."""
    s, lg = Ref(f"{key}__su_share_{short}"), Ref(f"{key}__su_share_{long}")
    return if_positive((s + 1) * (lg + 1), s - lg, 0.0)


DERIVED_FEATURES: tuple[Derived, ...] = (
    Derived("a_range__distinct_a_share_10m", _share("a_range", "distinct_a", "10m"), "rotation: every call a new A-suffix"),
    Derived("a_block__distinct_a_share_10m", _share("a_block", "distinct_a", "10m"), "rotation over 6 digits"),
    Derived("a_block__distinct_a_share_1h", _share("a_block", "distinct_a", "1h"), "rotation over 6 digits"),
    Derived("a_country__distinct_a_share_10m", _share("a_country", "distinct_a", "10m"), "new numbers from one country"),
    Derived("a_range__burst_10m_24h", _rate_ratio("a_range", "10m", 600, "24h", 86400), "the range against its own day"),
    Derived("a_block__burst_10m_24h", _rate_ratio("a_block", "10m", 600, "24h", 86400), "the block against its own day"),
    Derived("a_country__burst_10m_24h", _rate_ratio("a_country", "10m", 600, "24h", 86400), "the country against its own day"),
    Derived("ingress_trunk__burst_1m_1h", _rate_ratio("ingress_trunk", "1m", 60, "1h", 3600), "the trunk against its own hour"),
    Derived("ingress_trunk__burst_10m_24h", _rate_ratio("ingress_trunk", "10m", 600, "24h", 86400), "the trunk against its own day"),
    Derived("ingress_trunk__su_excess_1m_24h", _excess("ingress_trunk", "1m", "24h"), "short-unanswered wave on the trunk"),
    Derived("ingress_trunk__su_excess_10m_24h", _excess("ingress_trunk", "10m", "24h"), "short-unanswered wave on the trunk"),
    Derived("a_country__su_excess_10m_24h", _excess("a_country", "10m", "24h"), "short-unanswered wave from a country"),
)


# Every column call_features computes, in order: setup fields, primitive history, derived.
FEATURE_NAMES: tuple[str, ...] = (SETUP_FEATURES + tuple(f.name for f in HISTORY_FEATURES)
                                  + tuple(d.name for d in DERIVED_FEATURES))
_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}
for _d in DERIVED_FEATURES:
    assert all(_INDEX[r] < _INDEX[_d.name] for r in _d.expr.refs()), f"{_d.name} refers to a later feature"


def _compile_derive():
    """ONE Python function computing every derived feature from a row (list, FEATURE_NAMES order up
    to the derived part), generated from the same expressions the SQL is rendered from."""
    body = ", ".join(d.expr.py(_INDEX) for d in DERIVED_FEATURES)
    namespace = {"_ln": math.log}
    exec(f"def derive(r):\n    return [{body}]\n", namespace)  # noqa: S102 -- generated from DERIVED_FEATURES only
    return namespace["derive"]


derive = _compile_derive()

# Inputs the models are trained on. Left out: absolute trunk and country volumes (a busier trunk than
# in training would look like an attack, or hide one; the trunk enters through its bursts and outcome waves).
MODEL_FEATURES: tuple[str, ...] = tuple(
    n for n in FEATURE_NAMES if not n.startswith("ingress_trunk__count_") and not n.startswith("a_country__count_"))

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


def _a_prefix(a_number: str | None, drop: int) -> str | None:
    """The A-number without its last `drop` characters; None unless at least 2 remain ('+' and a digit)."""
    if a_number is None or len(a_number) <= drop + 1:
        return None
    return a_number[:-drop]


def a_range_of(a_number: str | None) -> str | None:
    """The A-number without its last 4 digits (the block a flash-call OTP provider rotates in)."""
    return KEY_BY_NAME["a_range"].of(a_number)


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


def number_setup(digits: np.ndarray, odd: dict[int, str]) -> dict[str, np.ndarray]:
    """`country_code_of`, `number_type_of` and the length of many numbers at once, for the batch:
    '+<digits>' numbers given as their digits (> 0; 0: NULL), any other text in `odd` (position ->
    text, through the scalar functions). Held equal to the scalar functions by the parity tests."""
    n = np.maximum(np.asarray(digits, dtype=np.int64), 0)
    length = np.where(n > 0, np.floor(np.log10(np.maximum(n, 1))).astype(np.int64) + 1, 0)
    kind = np.zeros(len(n), np.int64)
    for prefix in sorted(NUMBER_TYPE_PREFIXES, key=len):  # longer prefixes override shorter ones
        width = len(prefix) - 1
        head = n // 10 ** np.maximum(length - width, 0)
        kind = np.where((length >= width) & (head == int(prefix[1:])), NUMBER_TYPE_CODES[NUMBER_TYPE_PREFIXES[prefix]], kind)
    out = {"cc": KEY_BY_NAME["a_country"].numeric(n), "type": kind, "len": np.where(n > 0, length + 1, 0)}
    for i, text in odd.items():
        out["cc"][i], out["type"][i], out["len"][i] = country_code_of(text), number_type_of(text), len(text)
    return out


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


def pair_columns(f: HistoryFeature) -> tuple[str, ...]:
    """Keys identifying 'the same (key, counted value)' pair of a distinct-count feature. A key
    computed from the counted field itself (a_range from a_number) adds nothing: the pair is the number."""
    counted = DISTINCT_COLUMN[f.stat]
    return (counted,) if KEY_BY_NAME[f.key].field == counted else (f.key, counted)


def setup_sql() -> str:
    """SQL of the setup features over `local_ts`, a_number, and the numbers' country codes, types and
    lengths (`a_cc_`, `b_cc_`, `a_type_`, `b_type_`, `a_len_`, `b_len_`: `number_setup`, in the batch)."""
    return """
    CAST(hour(local_ts) AS DOUBLE) AS hour_local,
    CAST(a_number IS NULL AS DOUBLE) AS a_withheld,
    CAST(a_number IS NOT NULL AND a_cc_ = b_cc_ AS DOUBLE) AS same_country,
    CAST(a_len_ AS DOUBLE) AS a_len,
    CAST(b_len_ AS DOUBLE) AS b_len,
    CAST(a_type_ AS DOUBLE) AS a_type,
    CAST(b_type_ AS DOUBLE) AS b_type"""


def derived_sql() -> str:
    """`, <expr> AS "<name>"` for every derived feature (over columns named as the features)."""
    return "".join(f',\n  {d.expr.sql()} AS "{d.name}"' for d in DERIVED_FEATURES)


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
    from voicefw_assets.batch_features import call_features_select

    before = {r[1]: r for r in con.execute(call_features_select(con, "2026-01-02", {"op": "UTC"})).fetchall()}
    targets = con.execute("""SELECT call_id, end_time FROM mapped_cdrs WHERE partition_date = DATE '2026-01-02'
        ORDER BY start_time LIMIT 5 OFFSET 100""").fetchall()
    con.execute(f"""UPDATE mapped_cdrs SET answered = NOT answered, ring_s = 100 - ring_s, duration_s = 0,
        release_side = 'callee', disposition = 'busy', sip_code = 486, q850_cause = 17, answer_time = start_time
        WHERE call_id IN ({', '.join(f"'{t[0]}'" for t in targets)})""")
    after = {r[1]: r for r in con.execute(call_features_select(con, "2026-01-02", {"op": "UTC"})).fetchall()}
    first_end = min(t[1] for t in targets)
    problems = []
    for cid, row in before.items():
        if (cid in {t[0] for t in targets} or row[3] <= first_end) and row != after.get(cid):
            problems.append(f"call {cid}: features changed when its own (or a not-yet-ended call's) outcome changed")
    con.close()
    return problems[:10]
