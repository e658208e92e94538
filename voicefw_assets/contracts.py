"""The canonical CDR contract: the warehouse DDL, the pandera model that declares it, and the SQL
the checks run (rendered from that model, so the declaration has one home).

One home for the shape of `mapped_cdrs`, `rejected_cdrs`, the landing manifest and the staging
rows, so the mapping SQL, the asset checks and the downstream assets all agree.

pandera declares the contract; the check runs as SQL on the warehouse table (no pandas copy of an
operator-day): `contract_violations_sql()` renders every column rule (nullability, `str_matches`,
`isin`, `ge`/`le`) from the pandera schema, and every dataframe-wide rule from `ROW_RULES_SQL`,
which must name exactly the model's `@dataframe_check`s (a test runs both on the same bad rows).
"""

from __future__ import annotations

import pandera.pandas as pa

from voicefw_assets.operators import DISPOSITIONS, RELEASE_SIDES

E164 = r"^\+[1-9][0-9]{6,14}$"

# Field-level problems: the row is kept, the value is NULL (or derived), the flag names why.
QUALITY_FLAGS = (
    "a_number_invalid",  # caller number present (not withheld) but not a valid E.164 number: a_number NULL
    "b_number_invalid",  # callee number present but not a valid E.164 number: b_number NULL
    "sip_code_invalid",  # unparseable or outside 100-699: NULL
    "q850_cause_invalid",  # unparseable or outside 0-127 (e.g. a SIP code in the cause column): NULL
    "ingress_trunk_invalid",  # control characters or longer than 128: NULL
    "egress_trunk_invalid",
    "ring_s_invalid",  # the source ring timer is unreadable or negative: derived from the times
    "duration_s_invalid",  # the source billable seconds are unreadable or negative: end - answer
    "release_side_unmapped",  # not one of the canonical sides: 'unknown'
)

MAPPED_COLUMNS = {
    "operator": "VARCHAR NOT NULL",
    "call_id": "VARCHAR NOT NULL",
    "partition_date": "DATE NOT NULL",
    "start_time": "TIMESTAMPTZ NOT NULL",
    "answer_time": "TIMESTAMPTZ",
    "end_time": "TIMESTAMPTZ NOT NULL",
    "a_number": "VARCHAR",
    "a_number_raw": "VARCHAR",
    "b_number": "VARCHAR",  # NULL only with the b_number_invalid flag (b_number_raw keeps the text)
    "b_number_raw": "VARCHAR",
    "ingress_trunk": "VARCHAR",
    "egress_trunk": "VARCHAR",
    "answered": "BOOLEAN NOT NULL",
    "disposition": "VARCHAR NOT NULL",
    "sip_code": "INTEGER",
    "q850_cause": "INTEGER",
    "release_side": "VARCHAR NOT NULL",
    "duration_s": "DOUBLE NOT NULL",
    "ring_s": "DOUBLE NOT NULL",
    "source_file": "VARCHAR NOT NULL",
    "source_line": "BIGINT NOT NULL",
    "quality_flags": "VARCHAR[]",  # NULL when the row is clean, else names from QUALITY_FLAGS
}

# Bumped whenever a table below changes shape: the ingest tables are then rebuilt from landing.
SCHEMA_VERSION = 3

STAGING_COLUMNS = {
    "operator": "VARCHAR NOT NULL",
    "batch": "BIGINT NOT NULL",  # registration batch (time_ns): appended in order, so zone maps find a batch
    **{c: t.replace(" NOT NULL", "") for c, t in MAPPED_COLUMNS.items() if c != "operator"},
    "reject_reason": "VARCHAR",  # NULL = a canonical row (before duplicate call_ids are resolved)
    "raw_record": "VARCHAR",  # the line's text (undecodable bytes escaped) when rejected
}

INGEST_TABLES = ("mapped_cdrs", "rejected_cdrs", "landing_files", "landing_file_days", "landing_file_rejects", "ingest_rows")

WAREHOUSE_DDL = f"""
CREATE TABLE IF NOT EXISTS mapped_cdrs ({", ".join(f"{c} {t}" for c, t in MAPPED_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS rejected_cdrs (
    operator VARCHAR NOT NULL,
    partition_date DATE NOT NULL,
    source_file VARCHAR NOT NULL,
    source_line BIGINT,
    reason VARCHAR NOT NULL,
    raw_record VARCHAR
);
CREATE TABLE IF NOT EXISTS landing_files (
    operator VARCHAR NOT NULL,
    path VARCHAR NOT NULL,          -- the raw layer is the landed file itself, kept in landing
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 VARCHAR,
    status VARCHAR NOT NULL,        -- loaded | empty | duplicate | quarantined
    lines BIGINT NOT NULL,          -- physical lines, counted from the bytes
    header_lines BIGINT NOT NULL,   -- of which header (and extra header) lines
    data_lines BIGINT NOT NULL,     -- the rest: each one is mapped or rejected
    defect_lines BIGINT NOT NULL,   -- data lines that are not text (undecodable, NUL, too long)
    encoding VARCHAR,
    config VARCHAR,                 -- fingerprint of the operator config the rows were mapped with
    columns VARCHAR[],
    home_date DATE,                 -- where lines without an in-range start time go (to be rejected)
    detail VARCHAR,
    registered_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS landing_file_days (path VARCHAR NOT NULL, partition_date DATE NOT NULL, lines BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_rows ({", ".join(f"{c} {t}" for c, t in STAGING_COLUMNS.items())});
CREATE TABLE IF NOT EXISTS voicefw_schema (component VARCHAR PRIMARY KEY, version INTEGER NOT NULL);
"""


class MappedCdrContract(pa.DataFrameModel):
    """What every row of mapped_cdrs promises: the canonical schema (the DDL above), as a pandera contract."""

    operator: str = pa.Field(nullable=False)
    call_id: str = pa.Field(nullable=False)
    start_time: pa.DateTime = pa.Field(nullable=False)
    answer_time: pa.DateTime = pa.Field(nullable=True)
    end_time: pa.DateTime = pa.Field(nullable=False)
    a_number: str = pa.Field(nullable=True, str_matches=E164)
    b_number: str = pa.Field(nullable=True, str_matches=E164)
    ingress_trunk: str = pa.Field(nullable=True)
    egress_trunk: str = pa.Field(nullable=True)
    answered: bool = pa.Field(nullable=False)
    disposition: str = pa.Field(isin=list(DISPOSITIONS))
    sip_code: float = pa.Field(nullable=True, ge=100, le=699)
    q850_cause: float = pa.Field(nullable=True, ge=0, le=127)
    release_side: str = pa.Field(isin=list(RELEASE_SIDES))
    duration_s: float = pa.Field(ge=0)
    ring_s: float = pa.Field(ge=0)
    source_file: str = pa.Field(nullable=False)
    source_line: int = pa.Field(ge=1)

    class Config:
        coerce = True
        strict = False

    @pa.dataframe_check
    def end_not_before_start(cls, df):  # noqa: N805 - pandera's signature
        return df["end_time"] >= df["start_time"]

    @pa.dataframe_check
    def answered_iff_answer_time(cls, df):  # noqa: N805
        return df["answered"] == df["answer_time"].notna()

    @pa.dataframe_check
    def unanswered_bill_nothing(cls, df):  # noqa: N805
        return df["answered"] | (df["duration_s"] == 0)

    @pa.dataframe_check
    def callee_number_or_flag(cls, df):  # noqa: N805
        flagged = df["quality_flags"].map(lambda f: f is not None and "b_number_invalid" in list(f)) if "quality_flags" in df else False
        return df["b_number"].notna() | flagged


# The dataframe-wide rules above, as SQL over one row (true = the row keeps the rule).
ROW_RULES_SQL = {
    "end_not_before_start": "end_time >= start_time",
    "answered_iff_answer_time": "answered = (answer_time IS NOT NULL)",
    "unanswered_bill_nothing": "answered OR duration_s = 0",
    "callee_number_or_flag": "b_number IS NOT NULL OR list_contains(quality_flags, 'b_number_invalid')",
}


def _sql_str(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _column_rule_sql(column: str, check) -> str:
    """One pandera column check as an SQL condition that holds for a good value (NULLs pass)."""
    stats = check.statistics
    col = f'"{column}"'
    if check.name == "str_matches":
        return f"({col} IS NULL OR regexp_matches({col}, {_sql_str(stats['pattern'])}))"
    if check.name == "isin":
        return f"({col} IS NULL OR list_contains([{', '.join(_sql_str(v) for v in stats['allowed_values'])}], {col}))"
    if check.name == "greater_than_or_equal_to":
        return f"({col} IS NULL OR {col} >= {stats['min_value']})"
    if check.name == "less_than_or_equal_to":
        return f"({col} IS NULL OR {col} <= {stats['max_value']})"
    raise NotImplementedError(f"pandera check {check.name!r} on {column} has no SQL rendering yet: add it here")


def contract_rules_sql() -> dict[str, str]:
    """Rule name -> SQL condition a good row satisfies, for every rule of MappedCdrContract."""
    schema = MappedCdrContract.to_schema()
    rules = {}
    for name, column in schema.columns.items():
        if not column.nullable:
            rules[f"{name}_not_null"] = f'"{name}" IS NOT NULL'
        for check in column.checks:
            rules[f"{name}_{check.name}"] = _column_rule_sql(name, check)
    declared = {c.name for c in schema.checks}
    if declared != set(ROW_RULES_SQL):
        raise RuntimeError(f"ROW_RULES_SQL must render exactly the model's dataframe checks: {sorted(declared ^ set(ROW_RULES_SQL))}")
    rules.update({k: f"coalesce({v}, false)" for k, v in ROW_RULES_SQL.items()})
    return rules


def contract_violations_sql(table: str = "mapped_cdrs", where: str = "true", extra: dict[str, str] | None = None) -> str:
    """One pass: per partition_date, the number of rows breaking each rule (plus `extra` aggregates)."""
    rules = contract_rules_sql()
    counts = ", ".join([f'count(*) FILTER (WHERE NOT ({sql})) AS "{name}"' for name, sql in rules.items()]
                       + [f'{sql} AS "{name}"' for name, sql in (extra or {}).items()])
    return f"SELECT partition_date, count(*) AS rows, {counts} FROM {table} WHERE {where} GROUP BY partition_date"
