"""The canonical CDR contract: the warehouse DDL and the pandera model that checks it.

One home for the shape of `mapped_cdrs`, `rejected_cdrs` and the landing manifest, so the
mapping SQL, the asset checks and the downstream assets all agree.
"""

from __future__ import annotations

import pandera.pandas as pa

from voicefw_assets.operators import DISPOSITIONS, RELEASE_SIDES

E164 = r"^\+[1-9][0-9]{6,14}$"

MAPPED_COLUMNS = {
    "operator": "VARCHAR NOT NULL",
    "call_id": "VARCHAR NOT NULL",
    "partition_date": "DATE NOT NULL",
    "start_time": "TIMESTAMPTZ NOT NULL",
    "answer_time": "TIMESTAMPTZ",
    "end_time": "TIMESTAMPTZ NOT NULL",
    "a_number": "VARCHAR",
    "a_number_raw": "VARCHAR",
    "b_number": "VARCHAR NOT NULL",
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
}

WAREHOUSE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS raw;
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
    path VARCHAR NOT NULL,          -- the raw layer is the landed file itself, immutable, checked by sha256
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 VARCHAR,
    status VARCHAR NOT NULL,        -- loaded | empty | duplicate | quarantined
    rows BIGINT NOT NULL,           -- data rows incl. malformed lines (not header or extra header rows)
    columns VARCHAR[],              -- the file's column names, as read
    home_date DATE,                 -- where rows without a readable in-range start time go (to be rejected)
    detail VARCHAR,
    registered_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS landing_file_days (path VARCHAR NOT NULL, partition_date DATE NOT NULL, rows BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS landing_file_rejects (
    path VARCHAR NOT NULL,
    line BIGINT NOT NULL,            -- physical line in the file
    accepted_before BIGINT NOT NULL, -- parsed rows before it, to number the parsed rows' lines
    csv_line VARCHAR,
    error VARCHAR
);
"""


class MappedCdrContract(pa.DataFrameModel):
    """What every row of mapped_cdrs promises (DESIGN.md section 3)."""

    operator: str = pa.Field(nullable=False)
    call_id: str = pa.Field(nullable=False)
    start_time: pa.DateTime = pa.Field(nullable=False)
    answer_time: pa.DateTime = pa.Field(nullable=True)
    end_time: pa.DateTime = pa.Field(nullable=False)
    a_number: str = pa.Field(nullable=True, str_matches=E164)
    b_number: str = pa.Field(nullable=False, str_matches=E164)
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
