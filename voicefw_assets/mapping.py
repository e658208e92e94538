"""From landed files to canonical rows, all in DuckDB SQL generated from an operator config.

Two steps, both idempotent:
- `sync_landing` loads every new or changed file of an operator into `raw.<operator>` (every
  source column as text, plus source_file, source_line, partition_date). Each file is read once;
  a file that cannot be read is quarantined with a reason; a file whose bytes equal an already
  loaded one is quarantined as a duplicate (its rows are already in).
- `map_partition` turns one operator-day of raw rows into `mapped_cdrs` and `rejected_cdrs`
  (delete-then-insert in one transaction). Every raw row lands in exactly one of the two.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb

from voicefw_assets.contracts import MAPPED_COLUMNS, WAREHOUSE_DDL
from voicefw_assets.operators import DISPOSITIONS, RELEASE_SIDES, FieldSpec, NumberPlan, OperatorConfig
from voicefw_assets.settings import first_partition_date

META_COLUMNS = ("source_file", "source_line", "partition_date", "parse_error", "raw_line")
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000}
_MAX_EPOCH_S = 4_102_444_800  # 2100-01-01: beyond it an epoch value is a unit mistake, not a time


class UnreadableFile(Exception):
    """A landed file that cannot be loaded at all; its message becomes the quarantine reason."""


def ensure_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(WAREHOUSE_DDL)


def q(identifier: str) -> str:
    """Quote an SQL identifier (source column names are not trusted to be plain)."""
    return '"' + identifier.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def raw_table(operator: str) -> str:
    return f"raw.{q(operator)}"


# ---------------------------------------------------------------- SQL for one field


def e164_sql(expr: str, plan: NumberPlan) -> str:
    """E.164 ('+' and 7-15 digits) from an operator's number text, or NULL; vectorized SQL, no Python.

    Strips URI decoration (sip:, tel:, @host, ;params), the '(0)' trunk hint, spaces, dashes,
    dots, slashes and brackets; then applies the plan: '+' kept, international prefix replaced by
    '+', national prefix replaced by '+<country code>', anything else per `unprefixed`.
    """
    cleaned = (
        f"regexp_replace(replace(regexp_replace(lower({expr}), '^(sips?|tel):|[@;].*$', '', 'g'), '(0)', ''),"
        " '[\\s\\-./()]', '', 'g')"
    )
    intl, nat, cc = plan.international_prefix, plan.national_prefix, plan.country_code or ""
    branches = [f"WHEN c LIKE '+%' THEN c", f"WHEN c LIKE {lit(intl + '%')} THEN '+' || c[{len(intl) + 1}:]"]
    if nat:
        branches.append(f"WHEN c LIKE {lit(nat + '%')} THEN '+{cc}' || c[{len(nat) + 1}:]")
    branches.append("ELSE '+' || c" if plan.unprefixed == "international" else f"ELSE '+{cc}' || c")
    candidate = f"(SELECT CASE {' '.join(branches)} END FROM (SELECT {cleaned} AS c))"
    return f"(SELECT CASE WHEN regexp_full_match(n, '\\+[1-9][0-9]{{6,14}}') THEN n END FROM (SELECT {candidate} AS n))"


def _base(spec: FieldSpec) -> str:
    """The field's source text (trimmed, '' and null_if values as NULL)."""
    if spec.value is not None:
        return lit(spec.value)
    expr = f"CAST(({spec.sql}) AS VARCHAR)" if spec.sql is not None else q(spec.column)
    nulls = [""] + list(spec.null_if) + (["0"] if spec.zero_is_null else [])
    return f"(CASE WHEN trim({expr}) IN ({', '.join(lit(n) for n in nulls)}) THEN NULL ELSE trim({expr}) END)"


def _time(raw: str, spec: FieldSpec, tz: str) -> str:
    """TIMESTAMPTZ from text: a strptime format in the operator's zone, epoch, or ISO-8601."""
    if spec.time == "epoch":
        v = f"(try_cast({raw} AS DOUBLE) / {_UNIT_DIVISOR[spec.unit]})"
        return f"(CASE WHEN {v} BETWEEN 0 AND {_MAX_EPOCH_S} THEN to_timestamp({v}) END)"
    if spec.time == "iso8601":
        return (
            f"(CASE WHEN regexp_matches({raw}, '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$') THEN try_cast({raw} AS TIMESTAMPTZ)"
            f" ELSE timezone({lit(tz)}, try_cast({raw} AS TIMESTAMP)) END)"
        )
    return f"timezone({lit(tz)}, try_strptime({raw}, {lit(spec.time)}))"


def _mapped(raw: str, spec: FieldSpec) -> str:
    if spec.map is None:
        return raw
    cases = " ".join(f"WHEN {lit(k.upper())} THEN {lit(v)}" for k, v in spec.map.items())
    default = lit(spec.default) if spec.default is not None else "NULL"
    return f"(CASE WHEN {raw} IS NULL THEN NULL ELSE (CASE upper({raw}) {cases} ELSE {default} END) END)"


def _seconds(raw: str, spec: FieldSpec) -> str:
    return f"(try_cast({raw} AS DOUBLE) / {_UNIT_DIVISOR[spec.unit]})"


@dataclass
class _Field:
    raw: str  # source text (NULL when absent)
    typed: str  # canonical value (NULL when absent or unparseable)


def field_sql(config: OperatorConfig) -> dict[str, _Field]:
    """Raw and typed SQL for every canonical field the config defines."""
    out = {}
    for name, spec in config.fields.items():
        raw = _base(spec)
        if name in ("start_time", "answer_time", "end_time"):
            typed = _time(raw, spec, config.timezone)
        elif name in ("a_number", "b_number"):
            typed = e164_sql(raw, config.numbers)
        elif name in ("sip_code", "q850_cause"):
            typed = f"try_cast(try_cast({raw} AS DOUBLE) AS INTEGER)"
        elif name in ("duration_s", "ring_s"):
            typed = _seconds(raw, spec)
        else:
            typed = _mapped(raw, spec)
        out[name] = _Field(raw, typed)
    return out


def referenced_columns(config: OperatorConfig) -> set[str]:
    """Source columns the config needs: `column:` fields and "quoted" identifiers in its SQL."""
    cols = set(config.source_columns())
    for sql in [s.sql for s in config.fields.values() if s.sql] + [r.sql for r in config.reject_if]:
        cols.update(re.findall(r'"([^"]+)"', sql))
    return cols


# ---------------------------------------------------------------- reading files


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="") if path.name.endswith(".gz") else None
    return raw or open(path, encoding="utf-8", errors="replace", newline="")


def file_columns(config: OperatorConfig, path: Path) -> list[str]:
    """The file's column names: from the config (headerless) or its header row."""
    if not config.csv.header:
        return list(config.csv.columns)
    try:
        with _open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=config.csv.delimiter, quotechar=config.csv.quote), None)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UnreadableFile(f"cannot read the header: {exc}") from exc
    if not header:
        raise UnreadableFile("no header row")
    names = [h.strip() for h in header]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes or "" in names:
        raise UnreadableFile(f"header has duplicate or empty column names: {dupes or ['']}")
    return names


def read_csv_sql(config: OperatorConfig, path: Path, columns: list[str], rejects: str | None = None) -> str:
    """A read_csv() call with the dialect spelled out: no sniffing surprises, every value text."""
    d = config.csv
    opts = [
        lit(str(path)),
        "columns = {" + ", ".join(f"{lit(c)}: 'VARCHAR'" for c in columns) + "}",
        f"header = {'true' if d.header else 'false'}",
        f"delim = {lit(d.delimiter)}",
        f"quote = {lit(d.quote)}",
        f"escape = {lit(d.escape if d.escape is not None else d.quote)}",
        "auto_detect = false",
        "null_padding = false",
        "compression = 'auto'",
    ]
    if rejects:
        opts += ["store_rejects = true", f"rejects_table = {lit(rejects + '_errors')}", f"rejects_scan = {lit(rejects + '_scans')}"]
    return f"read_csv({', '.join(opts)})"


def partition_range() -> tuple[date, date]:
    """Days that exist as partitions: the configured first date through tomorrow (UTC)."""
    today = datetime.now(timezone.utc).date()
    return date.fromisoformat(first_partition_date()), today + timedelta(days=1)


def peek_file_dates(config: OperatorConfig, path: Path) -> set[date]:
    """The UTC days a file's calls start on, reading only its start-time column (for the sensor)."""
    if path.stat().st_size == 0:
        return set()
    columns = file_columns(config, path)
    start = field_sql(config)["start_time"].typed
    lo, hi = partition_range()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            f"SELECT DISTINCT CAST({start} AS DATE) AS d FROM {read_csv_sql(config, path, columns, 'peek')}"
            f" WHERE d BETWEEN ? AND ?",
            [lo, hi],
        ).fetchall()
    except duckdb.Error as exc:
        raise UnreadableFile(_short(exc)) from exc
    finally:
        con.close()
    return {r[0] for r in rows}


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- loading raw


@dataclass
class SyncReport:
    loaded: dict[str, int] = field(default_factory=dict)  # path -> rows
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    unchanged: int = 0
    dates_touched: set[date] = field(default_factory=set)


def load_file(con: duckdb.DuckDBPyConnection, config: OperatorConfig, path: Path) -> tuple[int, set[date]]:
    """Replace the file's rows in raw.<operator>; returns (rows, days). Raises UnreadableFile.

    Runs inside the caller's transaction. Line numbers come from the scan's ordinality, shifted
    past header rows and past the lines DuckDB's CSV reader rejected (those are kept as rows too,
    with parse_error and the raw line, so they can be rejected downstream with a reason).
    """
    table = raw_table(config.name)
    src = str(path)
    columns = file_columns(config, path)
    missing = referenced_columns(config) - set(columns)
    if missing:
        raise UnreadableFile(f"missing columns the config needs: {sorted(missing)}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} (source_file VARCHAR, source_line BIGINT, partition_date DATE, parse_error VARCHAR, raw_line VARCHAR)")
    existing = {r[0] for r in con.execute(f"SELECT column_name FROM duckdb_columns() WHERE schema_name = 'raw' AND table_name = ?", [config.name]).fetchall()}
    for c in columns:
        if c not in existing:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {q(c)} VARCHAR")
    con.execute(f"DELETE FROM {table} WHERE source_file = ?", [src])

    header_lines = 1 if config.csv.header else 0
    skip = config.csv.extra_header_rows
    start = field_sql(config)["start_time"].typed
    lo, hi = partition_range()
    rej = "rej_" + hashlib.md5(src.encode()).hexdigest()[:12]
    select_cols = ", ".join(q(c) for c in columns)
    try:
        con.execute(
            f"""INSERT INTO {table} BY NAME
            SELECT {select_cols}, {lit(src)} AS source_file, ordinality AS source_line,
                   CASE WHEN CAST({start} AS DATE) BETWEEN {lit(lo)} AND {lit(hi)} THEN CAST({start} AS DATE) END AS partition_date
            FROM {read_csv_sql(config, path, columns, rej)} WITH ORDINALITY
            WHERE ordinality > {skip}"""
        )
        n_bad = con.execute(f"SELECT count(DISTINCT line) FROM {rej}_errors").fetchone()[0]
    except duckdb.Error as exc:
        raise UnreadableFile(_short(exc)) from exc
    if n_bad:
        # accepted row k sits on line header + k + (rejected lines before it); reject i (rank) has r_i - header - i accepted rows before it
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _bad AS
            SELECT line, max(csv_line) AS csv_line, any_value(error_type || ': ' || error_message) AS err,
                   line - {header_lines} - row_number() OVER (ORDER BY line) AS accepted_before
            FROM {rej}_errors GROUP BY line"""
        )
        con.execute(
            f"""UPDATE {table} SET source_line = source_line + {header_lines}
                + (SELECT count(*) FROM _bad WHERE _bad.accepted_before < {table}.source_line)
            WHERE source_file = ?""",
            [src],
        )
        con.execute(
            f"""INSERT INTO {table} BY NAME SELECT {lit(src)} AS source_file, line AS source_line, err AS parse_error, csv_line AS raw_line FROM _bad"""
        )
    elif header_lines:
        con.execute(f"UPDATE {table} SET source_line = source_line + {header_lines} WHERE source_file = ?", [src])
    for t in (f"{rej}_errors", f"{rej}_scans"):
        con.execute(f"DROP TABLE IF EXISTS {t}")

    rows, home = con.execute(f"SELECT count(*), min(partition_date) FROM {table} WHERE source_file = ?", [src]).fetchone()
    if rows and home is None:
        raise UnreadableFile(f"no row has a start time on a partition day ({lo} .. {hi}); nothing to assign its rows to")
    # rows whose start time is unreadable or out of range go to the file's first day, to be rejected there
    con.execute(f"UPDATE {table} SET partition_date = ? WHERE source_file = ? AND partition_date IS NULL", [home, src])
    days = {r[0] for r in con.execute(f"SELECT DISTINCT partition_date FROM {table} WHERE source_file = ?", [src]).fetchall()}
    return rows, days


def sync_landing(con: duckdb.DuckDBPyConnection, config: OperatorConfig, landing, log=None) -> SyncReport:
    """Load every new or changed file of one operator; quarantine what cannot be loaded."""
    ensure_warehouse(con)
    report = SyncReport()
    for stray in landing.unmatched_files(config.name, config.file_patterns):
        reason = f"file name matches none of {list(config.file_patterns)} in operator_configs/{config.name}.yaml"
        landing.quarantine(stray.path, reason, config.name)
        report.quarantined[str(stray.path)] = reason
    known = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT path, size, mtime_ns, sha256, dates FROM landing_files WHERE operator = ? AND status IN ('loaded', 'empty')",
            [config.name],
        ).fetchall()
    }
    for f in landing.list_files(config.name, config.file_patterns):
        src = str(f.path)
        if src in known and known[src][0] == f.size and known[src][1] == f.mtime_ns:
            report.unchanged += 1
            continue
        digest = sha256_of(f.path)
        twin = next((p for p, (_, _, h, _) in known.items() if h == digest and p != src and Path(p).exists()), None)
        if src in known and known[src][2] == digest:  # touched, same bytes: nothing changes
            con.execute("UPDATE landing_files SET size = ?, mtime_ns = ? WHERE path = ?", [f.size, f.mtime_ns, src])
            report.unchanged += 1
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            if twin is not None:
                raise UnreadableFile(f"duplicate: same bytes (sha256 {digest[:12]}) as already loaded {twin}")
            old_days = set(known.get(src, (None, None, None, []))[3] or [])
            rows, days = (0, set()) if f.size == 0 else load_file(con, config, f.path)
            _record(con, f, digest, "empty" if rows == 0 else "loaded", rows, days, None)
            con.execute("COMMIT")
        except UnreadableFile as exc:
            con.execute("ROLLBACK")
            reason = str(exc)
            landing.quarantine(f.path, reason, config.name)
            _record(con, f, digest, "duplicate" if reason.startswith("duplicate") else "quarantined", 0, set(), reason)
            report.quarantined[src] = reason
            if log:
                log.warning(f"quarantined {src}: {reason}")
            continue
        except BaseException:
            con.execute("ROLLBACK")
            raise
        report.loaded[src] = rows
        report.dates_touched |= days | old_days
        known[src] = (f.size, f.mtime_ns, digest, list(days))
    return report


def _record(con, f, digest, status, rows, days, detail) -> None:
    con.execute("DELETE FROM landing_files WHERE path = ?", [str(f.path)])
    con.execute(
        "INSERT INTO landing_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [f.operator, str(f.path), f.size, f.mtime_ns, digest, status, rows, sorted(days), detail],
    )


# ---------------------------------------------------------------- mapping


def mapping_select(config: OperatorConfig, day: date) -> str:
    """SELECT producing every raw row of the operator-day with canonical columns and a reject reason."""
    fs = field_sql(config)
    table = raw_table(config.name)

    def typed(name: str, default: str = "NULL") -> str:
        return fs[name].typed if name in fs else default

    def raw(name: str) -> str:
        return fs[name].raw if name in fs else "NULL"

    duration = (
        "CASE WHEN answered THEN coalesce(duration_s_src, epoch(end_time - answer_time)) ELSE 0 END"
        if "duration_s" in fs
        else "CASE WHEN answered THEN epoch(end_time - answer_time) ELSE 0 END"
    )
    ring = "ring_s_src" if "ring_s" in fs else "epoch(coalesce(answer_time, end_time) - start_time)"
    withheld = ", ".join(lit(w) for w in config.numbers.withheld)
    checks = [
        ("parse_error IS NOT NULL", "'malformed CSV line: ' || parse_error"),
        *[(f"coalesce(rule_{i}, false)", lit(r.reason)) for i, r in enumerate(config.reject_if)],
        ("call_id IS NULL", "'missing call_id'"),
        ("start_time__raw IS NULL", "'missing start_time'"),
        ("end_time__raw IS NULL", "'missing end_time'"),
        *[(f"{f}__raw IS NOT NULL AND {f} IS NULL", f"'bad {f}: ' || {f}__raw") for f in ("start_time", "answer_time", "end_time")],
        ("CAST(start_time AS DATE) <> partition_date", "'start_time ' || CAST(start_time AS VARCHAR) || ' is outside the partition range'"),
        ("end_time < start_time", "'end_time before start_time'"),
        ("answer_time < start_time OR answer_time > end_time", "'answer_time outside start_time..end_time'"),
        ("b_number__raw IS NULL", "'missing b_number'"),
        ("b_number IS NULL", "'b_number not convertible to E.164: ' || b_number__raw"),
        (f"a_number IS NULL AND a_number__raw IS NOT NULL AND lower(a_number__raw) NOT IN ({withheld})", "'a_number not convertible to E.164: ' || a_number__raw"),
        ("disposition IS NULL", "'unmapped disposition: ' || coalesce(disposition__raw, '(empty)')"),
        (f"disposition NOT IN ({', '.join(lit(d) for d in DISPOSITIONS)})", "'disposition ' || disposition || ' is not canonical'"),
        ("(disposition = 'answered') <> (answer_time IS NOT NULL)", "'disposition ' || disposition || ' contradicts answer_time'"),
        (f"release_side NOT IN ({', '.join(lit(r) for r in RELEASE_SIDES)}) OR release_side IS NULL", "'bad release_side: ' || coalesce(release_side__raw, '(empty)')"),
        ("sip_code__raw IS NOT NULL AND (sip_code IS NULL OR sip_code NOT BETWEEN 100 AND 699)", "'bad sip_code: ' || sip_code__raw"),
        ("q850_cause__raw IS NOT NULL AND (q850_cause IS NULL OR q850_cause NOT BETWEEN 0 AND 127)", "'bad q850_cause: ' || q850_cause__raw"),
        ("duration_s__raw IS NOT NULL AND duration_s_src IS NULL", "'bad duration_s: ' || duration_s__raw"),
        ("ring_s__raw IS NOT NULL AND ring_s_src IS NULL", "'bad ring_s: ' || ring_s__raw"),
        ("ring_s IS NULL OR ring_s < 0 OR duration_s < 0", "'negative or unreadable duration/ring time'"),
    ]
    reason = "CASE " + " ".join(f"WHEN {c} THEN {r}" for c, r in checks) + " END"
    defaults = {"release_side": "'unknown'"}
    parsed_cols = ",\n".join(
        f"{raw(n)} AS {n}__raw, {typed(n, defaults.get(n, 'NULL'))} AS {n}"
        for n in ("call_id", "start_time", "answer_time", "end_time", "a_number", "b_number", "ingress_trunk", "egress_trunk",
                  "disposition", "sip_code", "q850_cause", "release_side")
    )
    return f"""
    WITH src AS (SELECT * FROM {table} WHERE partition_date = {lit(day)}),
    parsed AS (
        SELECT source_file, source_line, partition_date, parse_error, raw_line,
               {parsed_cols},
               {"".join(f"({r.sql}) AS rule_{i}, " for i, r in enumerate(config.reject_if))}
               {raw('duration_s')} AS duration_s__raw, {typed('duration_s')} AS duration_s_src,
               {raw('ring_s')} AS ring_s__raw, {typed('ring_s')} AS ring_s_src
        FROM src
    ),
    derived AS (
        SELECT *, disposition = 'answered' AS answered, {duration} AS duration_s, {ring} AS ring_s FROM parsed
    ),
    judged AS (SELECT *, {reason} AS first_reason FROM derived)
    SELECT *,
        CASE WHEN first_reason IS NOT NULL THEN first_reason
             WHEN row_number() OVER (PARTITION BY call_id, first_reason IS NULL ORDER BY source_file, source_line) > 1
             THEN 'duplicate call_id ' || call_id
        END AS reject_reason
    FROM judged
    """


@dataclass
class MapReport:
    raw: int
    mapped: int
    rejected: int
    reasons: dict[str, int]


def map_partition(con: duckdb.DuckDBPyConnection, config: OperatorConfig, day: date) -> MapReport:
    """Rebuild mapped_cdrs and rejected_cdrs for one operator-day, atomically."""
    ensure_warehouse(con)
    table = raw_table(config.name)
    has_raw = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'raw' AND table_name = ?", [config.name]
    ).fetchone()[0]
    cols = [c for c in MAPPED_COLUMNS if c not in ("operator", "a_number_raw", "b_number_raw")]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM mapped_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day])
        con.execute("DELETE FROM rejected_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day])
        if has_raw:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _judged AS {mapping_select(config, day)}")
            con.execute(
                f"""INSERT INTO mapped_cdrs BY NAME
                SELECT {lit(config.name)} AS operator, a_number__raw AS a_number_raw, b_number__raw AS b_number_raw, {", ".join(cols)}
                FROM _judged WHERE reject_reason IS NULL"""
            )
            con.execute(
                f"""INSERT INTO rejected_cdrs
                SELECT {lit(config.name)}, j.partition_date, j.source_file, j.source_line, j.reject_reason,
                       coalesce(j.raw_line, to_json(r)::VARCHAR)
                FROM _judged j JOIN {table} r ON r.source_file = j.source_file AND r.source_line = j.source_line
                WHERE j.reject_reason IS NOT NULL"""
            )
            con.execute("DROP TABLE _judged")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    raw_n = con.execute(f"SELECT count(*) FROM {table} WHERE partition_date = ?", [day]).fetchone()[0] if has_raw else 0
    mapped_n = con.execute("SELECT count(*) FROM mapped_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day]).fetchone()[0]
    reasons = dict(
        con.execute(
            """SELECT regexp_replace(reason, ':.*$', '') AS r, count(*) FROM rejected_cdrs
               WHERE operator = ? AND partition_date = ? GROUP BY r ORDER BY 2 DESC""",
            [config.name, day],
        ).fetchall()
    )
    return MapReport(raw=raw_n, mapped=mapped_n, rejected=sum(reasons.values()), reasons=reasons)
