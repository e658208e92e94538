"""Operator configs: one YAML file per operator in operator_configs/, the file stem is its name.

A config says how to read the operator's CSV and how each canonical column is derived from
its source columns. It is data: onboarding an operator means adding one file, no code.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voicefw_assets.settings import operator_config_dir

OPERATOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

CANONICAL_FIELDS = (
    "call_id",
    "start_time",
    "answer_time",
    "end_time",
    "a_number",
    "b_number",
    "ingress_trunk",
    "egress_trunk",
    "disposition",
    "sip_code",
    "q850_cause",
    "release_side",
    "duration_s",
    "ring_s",
)
REQUIRED_FIELDS = ("call_id", "start_time", "end_time", "b_number", "disposition")
TIME_FIELDS = ("start_time", "answer_time", "end_time")
DISPOSITIONS = ("answered", "no_answer", "busy", "cancelled", "failed")
RELEASE_SIDES = ("caller", "callee", "network", "unknown")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(Strict):
    """How one canonical column is computed. Exactly one of column / sql / value."""

    column: str | None = None
    sql: str | None = None  # a DuckDB expression over the source columns (quoted identifiers)
    value: str | int | None = None
    null_if: tuple[str, ...] = ()
    map: dict[str, str] | None = None  # source value (case-insensitive) -> canonical value
    default: str | None = None  # used by `map` for values not listed; unlisted without default = reject
    time: str | None = None  # strptime format, "epoch" or "iso8601" (time fields only)
    unit: Literal["s", "ms", "us"] = "s"  # for epoch times and durations
    zero_is_null: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = [x for x in (self.column, self.sql, self.value) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `column`, `sql`, `value`")
        return self


class CsvDialect(Strict):
    """How a file's lines split into fields. Every physical line is one record (a quoted field
    never spans lines); see voicefw_assets/ingest/split.py for the exact grammar."""

    header: bool = True
    # names: the header line lists the column names in the dialect itself;
    # declarations: Kamailio db_text, `name(type[,attr])` declarations separated by spaces
    header_style: Literal["names", "declarations"] = "names"
    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', max_length=1)  # "" = no quoting at all (db_text)
    escape: str | None = Field(None, min_length=1, max_length=1)  # None: the quote doubles itself (RFC 4180)
    columns: tuple[str, ...] = ()  # required when header is false
    extra_header_rows: int = Field(0, ge=0)  # physical lines after the header that are not CDRs (CUCM's type row)
    encoding: str = "utf-8"  # any Python codec; a byte-order mark in the file overrides it
    decode: dict[str, str] = {}  # exact replacements in every value after splitting (flatstore writes "|" as "%7C")
    max_line_bytes: int = Field(1 << 20, ge=1024)  # longer lines are rejected (their first 64 KiB kept)

    @model_validator(mode="after")
    def _columns_when_headerless(self) -> CsvDialect:
        if not self.header and not self.columns:
            raise ValueError("a headerless dialect must list its `columns`")
        if self.quote and self.quote == self.delimiter or self.escape == self.delimiter:
            raise ValueError("`delimiter` must differ from `quote` and `escape`")
        if self.header_style == "declarations" and not self.header:
            raise ValueError("`header_style: declarations` needs `header: true`")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("`columns` has duplicate names")
        return self

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {v!r}") from exc
        return v


class NumberPlan(Strict):
    """Enough of a numbering plan to turn the operator's numbers into E.164 in SQL."""

    country_code: str | None = Field(None, pattern=r"^[1-9][0-9]{0,2}$")
    national_prefix: str = Field("0", pattern=r"^[0-9]*$")
    international_prefix: str = Field("00", pattern=r"^[0-9]+$")
    unprefixed: Literal["national", "international"] = "national"
    withheld: tuple[str, ...] = ("anonymous", "unknown", "restricted", "private", "withheld", "unavailable")

    @model_validator(mode="after")
    def _country_when_national(self) -> NumberPlan:
        if self.country_code is None and (self.national_prefix or self.unprefixed == "national"):
            raise ValueError("national numbers need `country_code`")
        return self


class RejectRule(Strict):
    """Rows where `sql` is true are rejected with `reason` (e.g. CUCM CMR rows in a CDR file)."""

    sql: str
    reason: str


class OperatorConfig(Strict):
    name: str
    description: str = ""
    file_patterns: tuple[str, ...] = ("*.csv", "*.csv.gz")
    csv: CsvDialect
    timezone: str = "UTC"
    numbers: NumberPlan
    fields: dict[str, FieldSpec]
    reject_if: tuple[RejectRule, ...] = ()
    # source column with the call's end minus start in seconds (Asterisk `duration`): with local
    # times it tells which occurrence of the hour repeated when clocks go back is meant
    elapsed_s_column: str | None = None
    # SQL for an approximate UTC start (Asterisk's uniqueid begins with the epoch second of the
    # channel): when it lies within two hours, it picks the occurrence of a repeated start time
    start_hint_sql: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not OPERATOR_NAME.match(v):
            raise ValueError(f"operator name {v!r} must match {OPERATOR_NAME.pattern} (it names SQL tables)")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        ZoneInfo(v)  # raises for unknown zones
        return v

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, v: dict) -> dict:
        """`call_id: uniqueid` is short for `call_id: {column: uniqueid}`."""
        return {k: ({"column": s} if isinstance(s, str) else s) for k, s in (v or {}).items()}

    @model_validator(mode="after")
    def _fields(self) -> OperatorConfig:
        unknown = set(self.fields) - set(CANONICAL_FIELDS)
        if unknown:
            raise ValueError(f"unknown canonical fields {sorted(unknown)}; known: {list(CANONICAL_FIELDS)}")
        missing = set(REQUIRED_FIELDS) - set(self.fields)
        if missing:
            raise ValueError(f"missing required fields {sorted(missing)}")
        for name in TIME_FIELDS:
            spec = self.fields.get(name)
            if spec is not None and spec.value is None and spec.time is None:
                raise ValueError(f"field {name} needs `time:` (a strptime format, epoch or iso8601)")
        if self.csv.header is False:
            cols = set(self.csv.columns)
            for fname, spec in self.fields.items():
                if spec.column is not None and spec.column not in cols:
                    raise ValueError(f"field {fname} reads column {spec.column!r}, not among csv.columns")
        return self

    @property
    def fingerprint(self) -> str:
        """Changes whenever the config does: files mapped under another config are mapped again."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def claims(self, file_name: str) -> bool:
        """The file name matches one of `file_patterns` (shell wildcards)."""
        return any(fnmatch(file_name, p) for p in self.file_patterns)

    def source_columns(self) -> set[str]:
        """Columns the mapping reads by name (the sql expressions are checked when they run)."""
        cols = {s.column for s in self.fields.values() if s.column is not None}
        return cols | ({self.elapsed_s_column} if self.elapsed_s_column else set())


class ConfigError(ValueError):
    """An operator config that cannot be used, with the file named."""


def load_operator_config(path: Path) -> OperatorConfig:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return OperatorConfig(name=path.stem, **data)
    except Exception as exc:  # yaml and pydantic errors both: say which file
        raise ConfigError(f"{path}: {exc}") from exc


def load_operator_configs(directory: Path | None = None) -> dict[str, OperatorConfig]:
    directory = directory or operator_config_dir()
    return {p.stem: load_operator_config(p) for p in sorted(directory.glob("*.yaml"))}


@lru_cache(maxsize=None)
def _cached(directory: str) -> dict[str, OperatorConfig]:
    return load_operator_configs(Path(directory))


def operator_configs() -> dict[str, OperatorConfig]:
    """The configs of the active config directory, parsed once per process."""
    return _cached(str(operator_config_dir()))
