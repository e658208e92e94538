"""From landed files to canonical rows, all in DuckDB SQL generated from an operator config.

The raw layer is the landed files themselves (immutable, sha256 in a manifest), read through
`raw_select`: every source column as text plus source_file, source_line and partition_date.
Copying 5 M rows of text into DuckDB costs 5x a scan of the CSV (measured, docs/measurements.md),
so raw rows are not copied; they are parsed where they are needed.

Two steps, both idempotent:
- `sync_landing` registers every new or changed file of an operator (one scan: the days it
  touches, its row counts, its malformed lines). A file that cannot be read is quarantined with
  a reason; a file whose bytes equal an already registered one is quarantined as a duplicate.
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
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from voicefw_assets.contracts import MAPPED_COLUMNS, WAREHOUSE_DDL
from voicefw_assets.operators import DISPOSITIONS, RELEASE_SIDES, FieldSpec, NumberPlan, OperatorConfig
from voicefw_assets.settings import first_partition_date

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


def one_of(expr: str, values) -> str:
    """`expr IN (...)` without the hash join DuckDB plans for IN lists (it costs seconds per million rows)."""
    return f"list_contains([{', '.join(lit(v) for v in values)}], {expr})"


def raw_view(operator: str) -> str:
    return f"raw.{q(operator)}"


# ---------------------------------------------------------------- SQL for one field


def clean_number_sql(expr: str) -> str:
    """Number text without URI decoration (sip:, tel:, @host, ;params), the '(0)' trunk hint,
    spaces, dashes, dots, slashes and brackets."""
    return (
        f"regexp_replace(replace(regexp_replace(lower({expr}), '^(sips?|tel):|[@;].*$', '', 'g'), '(0)', ''),"
        " '[\\s\\-./()]', '', 'g')"
    )


def e164_sql(expr: str, plan: NumberPlan) -> str:
    """E.164 ('+' and 7-15 digits) or NULL: international prefix -> '+', national prefix ->
    '+<country code>', anything else per `unprefixed`.

    Most numbers are plain digits (maybe with a leading '+'); they take a path of string
    functions. Others (spaces, dashes, sip: URIs, '(0)') go through a chain of regexps first,
    each step referencing the previous once: DuckDB inlines every reference to a
    sub-expression, so a CASE over a cleaned number would run its regexps once per reference."""
    cc = plan.country_code or ""
    intl, nat = plan.international_prefix, plan.national_prefix
    other = f"'+' || {{x}}" if plan.unprefixed == "international" else f"'+{cc}' || {{x}}"

    def plan_sql(x: str) -> str:  # x: digits with at most a leading '+'
        branches = [f"WHEN starts_with({x}, '+') THEN {x}", f"WHEN starts_with({x}, {lit(intl)}) THEN '+' || {x}[{len(intl) + 1}:]"]
        if nat:
            branches.append(f"WHEN starts_with({x}, {lit(nat)}) THEN '+{cc}' || {x}[{len(nat) + 1}:]")
        return f"(CASE {' '.join(branches)} ELSE {other.format(x=x)} END)"

    plain = f"(CASE WHEN ltrim({expr}, '+0123456789') = '' THEN {plan_sql(expr)} END)"
    n = clean_number_sql(expr)
    n = f"regexp_replace({n}, '^{intl}', '+')"
    if nat:
        n = f"regexp_replace({n}, '^{nat}', '+{cc}')"
    n = f"regexp_replace({n}, '^([^+])', '{'+' if plan.unprefixed == 'international' else '+' + cc}\\1')"
    messy = f"nullif(regexp_extract({n}, '^(\\+[1-9][0-9]{{6,14}})$', 1), '')"
    valid = "(CASE WHEN length(p) BETWEEN 8 AND 16 AND p[2] <> '0' AND position('+' IN p[2:]) = 0 THEN p END)"
    return f"(SELECT CASE WHEN p IS NOT NULL THEN {valid} ELSE {messy} END FROM (SELECT {plain} AS p))"


def _base(spec: FieldSpec) -> str:
    """The field's source text (trimmed, '' and null_if values as NULL)."""
    if spec.value is not None:
        return lit(spec.value)
    expr = f"CAST(({spec.sql}) AS VARCHAR)" if spec.sql is not None else q(spec.column)
    nulls = [""] + list(spec.null_if) + (["0"] if spec.zero_is_null else [])
    if len(nulls) == 1:
        return f"nullif(trim({expr}), '')"
    return f"(SELECT CASE WHEN {one_of('t', nulls)} THEN NULL ELSE t END FROM (SELECT trim({expr}) AS t))"


def _time(raw: str, spec: FieldSpec, tz: str) -> str:
    """TIMESTAMPTZ from text: a strptime format in the operator's zone, epoch, or ISO-8601."""
    if spec.time == "epoch":
        v = f"(try_cast({raw} AS DOUBLE) / {_UNIT_DIVISOR[spec.unit]})"
        return f"(CASE WHEN {v} BETWEEN 0 AND {_MAX_EPOCH_S} THEN to_timestamp({v}) END)"
    if spec.time == "iso8601" and tz == "UTC":  # offset-less text is UTC too: one cast
        return f"try_cast({raw} AS TIMESTAMPTZ)"
    if spec.time == "iso8601":
        return (
            f"(CASE WHEN regexp_matches({raw}, '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$') THEN try_cast({raw} AS TIMESTAMPTZ)"
            f" ELSE timezone({lit(tz)}, try_cast({raw} AS TIMESTAMP)) END)"
        )
    return local_time_sql(f"try_strptime({raw}, {lit(spec.time)})", tz)


@lru_cache(maxsize=None)
def repeated_hour_keys(tz: str) -> tuple[int, ...]:
    """month * 100 + hour of every local wall-clock hour that ever repeats in `tz` (1990-2060),
    from the tz database: a cheap filter so the exact ICU check runs only near a fall-back."""
    zone = ZoneInfo(tz)
    keys = set()
    t = datetime(1990, 1, 1, tzinfo=timezone.utc)
    prev = t.astimezone(zone).utcoffset()
    while t.year < 2061:
        t += timedelta(hours=1)
        off = t.astimezone(zone).utcoffset()
        if off < prev:  # clocks went back: local times in [t + off, t + prev) occur twice
            local = (t + off).replace(tzinfo=None)
            while local < (t + prev).replace(tzinfo=None):
                keys.add(local.month * 100 + local.hour)
                local += timedelta(minutes=15)
        prev = off
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
    which is one hour later. The mapping may then pick the other one (`_resolve_repeated_hour`)."""
    if tz == "UTC":
        return f"timezone('UTC', {local})"
    late = f"timezone({lit(tz)}, {local})"
    return f"(CASE WHEN {repeated_local_time_sql(local, tz)} THEN {late} - INTERVAL 1 HOUR ELSE {late} END)"


def _mapped(raw: str, spec: FieldSpec) -> str:
    if spec.map is None:
        return raw
    cases = " ".join(f"WHEN {lit(k.upper())} THEN {lit(v)}" for k, v in spec.map.items())
    default = lit(spec.default) if spec.default is not None else "NULL"
    return f"(CASE upper(coalesce({raw}, chr(0))) {cases} WHEN chr(0) THEN NULL ELSE {default} END)"  # one reference to raw


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


def referenced_columns(config: OperatorConfig, available: set[str] | None = None) -> set[str]:
    """Source columns the config reads: `column:` fields, "quoted" identifiers in its SQL, and
    (given the file's columns) any of them named bare in its SQL."""
    cols = set(config.source_columns())
    sqls = [s.sql for s in config.fields.values() if s.sql] + [r.sql for r in config.reject_if] + [config.start_hint_sql or ""]
    for sql in sqls:
        cols.update(re.findall(r'"([^"]+)"', sql))
        cols.update(c for c in available or () if re.search(rf"(?<![\w\"]){re.escape(c)}(?![\w\"])", sql))
    return cols


# ---------------------------------------------------------------- reading files


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") if path.name.endswith(".gz") else None
    return raw or open(path, encoding="utf-8-sig", errors="replace", newline="")


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
    else:  # the same lines a registering scan recorded as rejects are skipped here
        opts.append("ignore_errors = true")
    return f"read_csv({', '.join(opts)})"


def partition_range() -> tuple[date, date]:
    """Days that exist as partitions: the configured first date through tomorrow (UTC)."""
    today = datetime.now(timezone.utc).date()
    return date.fromisoformat(first_partition_date()), today + timedelta(days=1)


@dataclass
class FileScan:
    """What one scan of a landed file tells: its columns, rows per UTC start day, malformed lines."""

    columns: list[str]
    day_rows: dict[date, int]  # rows per partition day, unreadable/out-of-range starts counted on home_date
    rejects: list[tuple[int, int, str | None, str]]  # (line, accepted_before, csv_line, error)
    home_date: date | None

    @property
    def rows(self) -> int:
        return sum(self.day_rows.values())


def scan_file(con: duckdb.DuckDBPyConnection, config: OperatorConfig, path: Path) -> FileScan:
    """One pass over a file with DuckDB's CSV reader; raises UnreadableFile with the reason."""
    columns = file_columns(config, path)
    missing = referenced_columns(config) - set(columns)
    if missing:
        raise UnreadableFile(f"missing columns the config needs: {sorted(missing)}")
    start = field_sql(config)["start_time"].typed
    lo, hi = partition_range()
    rej = "rej_" + hashlib.md5(str(path).encode()).hexdigest()[:12]
    header = 1 if config.csv.header else 0
    try:
        days = con.execute(
            f"""SELECT CASE WHEN d BETWEEN ? AND ? THEN d END AS day, count(*)
                FROM (SELECT CAST({start} AS DATE) AS d FROM {read_csv_sql(config, path, columns, rej)} WITH ORDINALITY
                      WHERE ordinality > {config.csv.extra_header_rows})
                GROUP BY day""",
            [lo, hi],
        ).fetchall()
        rejects = con.execute(
            f"""SELECT line, line - {header} - row_number() OVER (ORDER BY line) AS accepted_before, csv_line, err
                FROM (SELECT line, max(csv_line) AS csv_line, max(error_type || ': ' || error_message) AS err
                      FROM {rej}_errors GROUP BY line)
                ORDER BY line"""
        ).fetchall()
    except duckdb.Error as exc:
        raise UnreadableFile(_short(exc)) from exc
    finally:
        for t in (f"{rej}_errors", f"{rej}_scans"):
            con.execute(f"DROP TABLE IF EXISTS {t}")
    day_rows = {d: n for d, n in days if d is not None}
    unplaced = sum(n for d, n in days if d is None) + len(rejects)
    home = min(day_rows, default=None)
    if unplaced and home is None:
        raise UnreadableFile(f"no row has a start time on a partition day ({lo} .. {hi}); nothing to assign its rows to")
    if unplaced:
        day_rows[home] += unplaced
    return FileScan(columns, day_rows, rejects, home)


def peek_file_dates(config: OperatorConfig, path: Path) -> set[date]:
    """The UTC days a file's rows belong to (what the sensor needs to pick partitions)."""
    if path.stat().st_size == 0:
        return set()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return set(scan_file(con, config, path).day_rows)
    finally:
        con.close()


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- registering files (the raw layer)


@dataclass
class SyncReport:
    loaded: dict[str, int] = field(default_factory=dict)  # path -> rows
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    unchanged: int = 0
    dates_touched: set[date] = field(default_factory=set)


def sync_landing(con: duckdb.DuckDBPyConnection, config: OperatorConfig, landing, log=None) -> SyncReport:
    """Register every new or changed file of one operator; quarantine what cannot be read."""
    ensure_warehouse(con)
    report = SyncReport()
    for stray in landing.unmatched_files(config.name, config.file_patterns):
        reason = f"file name matches none of {list(config.file_patterns)} in operator_configs/{config.name}.yaml"
        landing.quarantine(stray.path, reason, config.name)
        report.quarantined[str(stray.path)] = reason
    known = manifest(con, config.name)
    # oldest first, so of two identical files the later arrival is the one called a duplicate
    for f in sorted(landing.list_files(config.name, config.file_patterns), key=lambda f: (f.arrived_ns, str(f.path))):
        src = str(f.path)
        if src in known and known[src][0] == f.size and known[src][1] == f.mtime_ns:
            report.unchanged += 1
            continue
        digest = sha256_of(f.path)
        if src in known and known[src][2] == digest:  # touched, same bytes: nothing changes
            con.execute("UPDATE landing_files SET size = ?, mtime_ns = ? WHERE path = ?", [f.size, f.mtime_ns, src])
            report.unchanged += 1
            continue
        twin = next((p for p, k in known.items() if k[2] == digest and p != src and Path(p).exists()), None)
        try:
            if twin is not None:
                raise UnreadableFile(f"duplicate: same bytes (sha256 {digest[:12]}) as already registered {twin}")
            scan = FileScan([], {}, [], None) if f.size == 0 else scan_file(con, config, f.path)
        except UnreadableFile as exc:
            reason = str(exc)
            landing.quarantine(f.path, reason, config.name)
            _register(con, f, digest, "duplicate" if twin else "quarantined", None, reason)
            report.quarantined[src] = reason
            if log:
                log.warning(f"quarantined {src}: {reason}")
            continue
        _register(con, f, digest, "loaded" if scan.rows else "empty", scan, None)
        report.loaded[src] = scan.rows
        report.dates_touched |= set(scan.day_rows) | set(known.get(src, (0, 0, "", []))[3] or [])
        known[src] = (f.size, f.mtime_ns, digest, list(scan.day_rows))
    if report.loaded or report.quarantined:
        _refresh_raw_view(con, config)
    return report


def manifest(con: duckdb.DuckDBPyConnection, operator: str) -> dict[str, tuple[int, int, str, list[date]]]:
    """Registered (loaded or empty) files of an operator: path -> (size, mtime_ns, sha256, days)."""
    rows = con.execute(
        """SELECT f.path, size, mtime_ns, sha256, coalesce(list(d.partition_date) FILTER (WHERE d.partition_date IS NOT NULL), [])
           FROM landing_files f LEFT JOIN landing_file_days d USING (path)
           WHERE operator = ? AND status IN ('loaded', 'empty') GROUP BY ALL""",
        [operator],
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _register(con, f, digest: str, status: str, scan: FileScan | None, detail: str | None) -> None:
    """Replace the manifest rows of one file, atomically."""
    src = str(f.path)
    con.execute("BEGIN TRANSACTION")
    try:
        for table in ("landing_files", "landing_file_days", "landing_file_rejects"):
            con.execute(f"DELETE FROM {table} WHERE path = ?", [src])
        con.execute(
            "INSERT INTO landing_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
            [f.operator, src, f.size, f.mtime_ns, digest, status, scan.rows if scan else 0,
             scan.columns if scan else None, scan.home_date if scan else None, detail],
        )
        if scan:
            if scan.day_rows:
                con.executemany("INSERT INTO landing_file_days VALUES (?, ?, ?)", [[src, d, n] for d, n in scan.day_rows.items()])
            if scan.rejects:
                con.executemany("INSERT INTO landing_file_rejects VALUES (?, ?, ?, ?, ?)", [[src, *r] for r in scan.rejects])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class RegisteredFile:
    path: str
    columns: list[str]
    home_date: date
    scanned_rows: int  # rows DuckDB's reader returns for it: parsed rows, extra header rows included


def registered_files(con: duckdb.DuckDBPyConnection, config: OperatorConfig, day: date | None = None) -> list[RegisteredFile]:
    """Files of the operator in the raw layer (all, or those with rows on `day`)."""
    rows = con.execute(
        """SELECT path, columns, home_date,
                  rows - (SELECT count(*) FROM landing_file_rejects r WHERE r.path = f.path) + ?
           FROM landing_files f WHERE operator = ? AND status = 'loaded'
           AND (CAST(? AS DATE) IS NULL OR EXISTS (SELECT 1 FROM landing_file_days d WHERE d.path = f.path AND d.partition_date = ?))
           ORDER BY path""",
        [config.csv.extra_header_rows, config.name, day, day],
    ).fetchall()
    return [RegisteredFile(*r) for r in rows]


def raw_select(config: OperatorConfig, files: list[RegisteredFile], day: date | None = None, only: set[str] | None = None) -> str:
    """SELECT of raw rows: every source column as text, source_file, source_line, partition_date,
    start_parsed (the start time as the mapping reads it, parsed once), and for lines the CSV
    reader could not split, parse_error and raw_line.

    Files with the same columns are read by one read_csv over the list (a union per file costs
    planning time and a scan per file). Line numbers: the scan's ordinality minus the rows of the
    files before (insertion order is kept), shifted past header rows and the malformed lines
    before the row (an ASOF join on the registered rejects)."""
    if not files:
        return (
            "SELECT NULL::VARCHAR AS source_file, NULL::BIGINT AS source_line, NULL::DATE AS partition_date,"
            " NULL::TIMESTAMPTZ AS start_parsed, NULL::VARCHAR AS parse_error, NULL::VARCHAR AS raw_line WHERE false"
        )
    start = field_sql(config)["start_time"].typed
    lo, hi = partition_range()
    header = 1 if config.csv.header else 0
    groups: dict[tuple[str, ...], list[RegisteredFile]] = {}
    for f in files:
        groups.setdefault(tuple(f.columns), []).append(f)
    paths = ", ".join(lit(f.path) for f in files)
    parts = []
    for columns, group in groups.items():
        offsets, off = [], 0
        for f in group:
            offsets.append(f"({lit(f.path)}, {off}, {lit(f.home_date)}::DATE)")
            off += f.scanned_rows
        scan = read_csv_sql(config, Path(group[0].path), list(columns)).replace(
            lit(group[0].path), "[" + ", ".join(lit(f.path) for f in group) + "]", 1
        ).replace("auto_detect = false", "auto_detect = false, filename = '__file'", 1)
        cols = ", ".join(q(c) for c in columns if only is None or c in only)
        parts.append(
            f"""SELECT * EXCLUDE (__k, __home, __shift, __rpath, __rbefore), __k + {header} + coalesce(__shift, 0) AS source_line,
                   coalesce(CASE WHEN CAST(start_parsed AS DATE) BETWEEN {lit(lo)} AND {lit(hi)} THEN CAST(start_parsed AS DATE) END,
                            __home) AS partition_date
            FROM (
                SELECT {cols}, s.__file AS source_file, s.ordinality - o.off AS __k, o.home_date AS __home,
                       {start} AS start_parsed, NULL::VARCHAR AS parse_error, NULL::VARCHAR AS raw_line
                FROM {scan} WITH ORDINALITY AS s
                JOIN (VALUES {", ".join(offsets)}) AS o(path, off, home_date) ON s.__file = o.path
            ) rows
            ASOF LEFT JOIN (
                SELECT path AS __rpath, accepted_before AS __rbefore, row_number() OVER (PARTITION BY path ORDER BY line) AS __shift
                FROM landing_file_rejects WHERE path IN ({paths})
            ) rej ON rows.source_file = rej.__rpath AND rows.__k > rej.__rbefore
            WHERE __k > {config.csv.extra_header_rows}"""
        )
    parts.append(
        f"""SELECT r.path AS source_file, r.line AS source_line, f.home_date AS partition_date, NULL::TIMESTAMPTZ AS start_parsed,
                   r.error AS parse_error, r.csv_line AS raw_line
        FROM landing_file_rejects r JOIN landing_files f USING (path) WHERE r.path IN ({paths})"""
    )
    union = "\nUNION ALL BY NAME\n".join(f"({p})" for p in parts)
    return f"SELECT * FROM ({union})" + (f" WHERE partition_date = {lit(day)}" if day else "")


def _refresh_raw_view(con: duckdb.DuckDBPyConnection, config: OperatorConfig) -> None:
    """raw.<operator>: a view over the operator's registered files, for ad-hoc queries and the UI."""
    files = registered_files(con, config)
    con.execute(f"CREATE OR REPLACE VIEW {raw_view(config.name)} AS {raw_select(config, files)}")


def raw_rows(con: duckdb.DuckDBPyConnection, operator: str, day: date) -> int:
    """Raw rows of an operator-day, from the manifest (no file is read)."""
    return con.execute(
        """SELECT coalesce(sum(d.rows), 0) FROM landing_file_days d JOIN landing_files f USING (path)
           WHERE f.operator = ? AND f.status = 'loaded' AND d.partition_date = ?""",
        [operator, day],
    ).fetchone()[0]


# ---------------------------------------------------------------- mapping


def mapping_select(config: OperatorConfig, files: list[RegisteredFile], day: date) -> str:
    """Every raw row of the operator-day with canonical columns and a reject reason (NULL = mapped)."""
    fs = field_sql(config)
    # only the columns the config reads: a CSV scan materializes what is selected (CUCM has ~130)
    source_cols = sorted(referenced_columns(config, {c for f in files for c in f.columns}))

    def typed(name: str, default: str = "NULL") -> str:
        return fs[name].typed if name in fs else default

    def raw(name: str) -> str:
        return fs[name].raw if name in fs else "NULL"

    checks = [
        ("parse_error IS NOT NULL", "'malformed CSV line: ' || parse_error"),
        *[(f"coalesce(rule_{i}, false)", lit(r.reason)) for i, r in enumerate(config.reject_if)],
        ("call_id IS NULL", "'missing call_id'"),
        ("start_time__raw IS NULL", "'missing start_time'"),
        ("end_time__raw IS NULL", "'missing end_time'"),
        *[(f"{f}__raw IS NOT NULL AND {f} IS NULL", f"'bad {f}: ' || {f}__raw") for f in ("start_time", "answer_time", "end_time")],
        ("CAST(start_time AS DATE) <> partition_date", "'start_time outside the partition range: ' || CAST(start_time AS VARCHAR)"),
        ("end_time < start_time", "'end_time before start_time'"),
        ("answer_time < start_time OR answer_time > end_time", "'answer_time outside start_time..end_time'"),
        ("b_number__raw IS NULL", "'missing b_number'"),
        ("b_number IS NULL", "'b_number not convertible to E.164: ' || b_number__raw"),
        (f"a_number IS NULL AND a_number__raw IS NOT NULL AND NOT {one_of('lower(a_number__raw)', config.numbers.withheld)}", "'a_number not convertible to E.164: ' || a_number__raw"),
        ("disposition IS NULL", "'unmapped disposition: ' || coalesce(disposition__raw, '(empty)')"),
        (f"NOT {one_of('disposition', DISPOSITIONS)}", "'disposition not canonical: ' || disposition"),
        ("(disposition = 'answered') <> (answer_time IS NOT NULL)", "'disposition contradicts answer_time: ' || disposition"),
        (f"release_side IS NULL OR NOT {one_of('release_side', RELEASE_SIDES)}", "'bad release_side: ' || coalesce(release_side__raw, '(empty)')"),
        ("sip_code__raw IS NOT NULL AND (sip_code IS NULL OR sip_code NOT BETWEEN 100 AND 699)", "'bad sip_code: ' || sip_code__raw"),
        ("q850_cause__raw IS NOT NULL AND (q850_cause IS NULL OR q850_cause NOT BETWEEN 0 AND 127)", "'bad q850_cause: ' || q850_cause__raw"),
        ("duration_s__raw IS NOT NULL AND duration_s_src IS NULL", "'bad duration_s: ' || duration_s__raw"),
        ("ring_s__raw IS NOT NULL AND ring_s_src IS NULL", "'bad ring_s: ' || ring_s__raw"),
        ("ring_s IS NULL OR ring_s < 0 OR duration_s < 0", "'negative or unreadable duration/ring time'"),
    ]
    # reasons read "<kind>: <detail>"; reports group by the kind
    reason = "CASE " + " ".join(f"WHEN {c} THEN {r}" for c, r in checks) + " END"
    defaults = {"release_side": "'unknown'"}
    elapsed = f"try_cast(nullif(trim({q(config.elapsed_s_column)}), '') AS DOUBLE)" if config.elapsed_s_column else "NULL"
    local = {f: f"try_strptime({fs[f].raw}, {lit(config.fields[f].time)})" for f in ("start_time", "end_time", "answer_time")
             if f in fs and config.fields[f].time not in (None, "epoch", "iso8601")}
    repeated = "".join(f"{repeated_local_time_sql(l, config.timezone)} AS {f}__repeated, " for f, l in local.items())
    fs["start_time"].typed = "start_parsed"  # parsed once, in raw_select
    parsed_cols = ",\n".join(
        f"{raw(n)} AS {n}__raw, {typed(n, defaults.get(n, 'NULL'))} AS {n}"
        for n in ("call_id", "start_time", "answer_time", "end_time", "a_number", "b_number", "ingress_trunk", "egress_trunk",
                  "disposition", "sip_code", "q850_cause", "release_side")
    )
    rules = "".join(f"({r.sql}) AS rule_{i}, " for i, r in enumerate(config.reject_if))
    src_struct = "struct_pack(" + ", ".join(f"{q(c)} := {q(c)}" for c in source_cols) + ")" if source_cols else "NULL"
    duration = "CASE WHEN answered THEN coalesce(duration_s_src, epoch(end_time - answer_time)) ELSE 0 END"
    ring = "ring_s_src" if "ring_s" in fs else "epoch(coalesce(answer_time, end_time) - start_time)"
    return f"""
    WITH parsed AS (
        SELECT source_file, source_line, partition_date, parse_error, raw_line, {src_struct} AS src_row,
               {parsed_cols}, {rules}
               {repeated}{elapsed} AS elapsed_s, {f"try_cast(({config.start_hint_sql}) AS TIMESTAMPTZ)" if config.start_hint_sql else "NULL::TIMESTAMPTZ"} AS start_hint,
               {raw('duration_s')} AS duration_s__raw, {typed('duration_s')} AS duration_s_src,
               {raw('ring_s')} AS ring_s__raw, {typed('ring_s')} AS ring_s_src
        FROM ({raw_select(config, files, day, only=set(source_cols))})
    ),
    resolved AS ({_resolve_repeated_hour(config, fs)}),
    derived AS (SELECT *, disposition = 'answered' AS answered FROM resolved),
    timed AS (SELECT *, {duration} AS duration_s, {ring} AS ring_s FROM derived),
    judged AS (SELECT *, {reason} AS reject_reason FROM timed)
    SELECT {", ".join(c for c in MAPPED_COLUMNS if c not in ("operator", "a_number_raw", "b_number_raw"))},
        a_number__raw, b_number__raw, call_id__raw, start_time__raw, reject_reason,
        CASE WHEN reject_reason IS NOT NULL THEN coalesce(raw_line, to_json(src_row)::VARCHAR) END AS raw_record
    FROM judged
    """


# Duplicate call_ids among otherwise valid rows: the first (by file, line) is kept. A window over
# every row costs 8 s per 500 k rows (it sorts the whole payload); grouping finds the few duplicates.
_REJECT_DUPLICATES = """
UPDATE _judged SET reject_reason = 'duplicate call_id: ' || d.call_id || ' (first at line ' || d.first_line || ' of ' || d.first_file || ')',
       raw_record = to_json(struct_pack(call_id := _judged.call_id__raw, start_time := _judged.start_time__raw,
                                        a_number := _judged.a_number__raw, b_number := _judged.b_number__raw))::VARCHAR
FROM (
    SELECT call_id, first(source_file ORDER BY source_file, source_line) AS first_file,
           first(source_line ORDER BY source_file, source_line) AS first_line
    FROM _judged
    WHERE reject_reason IS NULL
      AND call_id IN (SELECT call_id FROM _judged WHERE reject_reason IS NULL GROUP BY call_id HAVING count(*) > 1)
    GROUP BY call_id
) d
WHERE _judged.call_id = d.call_id AND _judged.reject_reason IS NULL
  AND NOT (_judged.source_file = d.first_file AND _judged.source_line = d.first_line)
"""


def _resolve_repeated_hour(config: OperatorConfig, fs: dict) -> str:
    """Local times in the repeated hour default to the first occurrence. Where the operator also
    exports the call's elapsed seconds (Asterisk `duration` = end - start), a repeated start or end
    takes the occurrence that agrees with it, and a repeated answer the one inside start..end."""
    repeated = [f for f in ("start_time", "end_time", "answer_time")
                if f in config.fields and config.fields[f].time not in (None, "epoch", "iso8601")]
    if not repeated or config.timezone == "UTC":
        return "SELECT * FROM parsed"
    hour = "INTERVAL 1 HOUR"
    fix = {}
    if "start_time" in repeated and (config.elapsed_s_column or config.start_hint_sql):
        by_hint = (
            f"WHEN start_time__repeated AND abs(epoch(start_hint - start_time)) < 7200"
            f" THEN CASE WHEN abs(epoch(start_hint - start_time - {hour})) < abs(epoch(start_hint - start_time))"
            f" THEN start_time + {hour} ELSE start_time END"
        )
        by_elapsed = (
            f"WHEN start_time__repeated AND elapsed_s IS NOT NULL AND end_time IS NOT NULL"
            f" AND abs(epoch(end_time - (start_time + {hour})) - elapsed_s) < abs(epoch(end_time - start_time) - elapsed_s)"
            f" THEN start_time + {hour}"
        )
        fix["start_time"] = f"CASE {by_hint if config.start_hint_sql else ''} {by_elapsed} ELSE start_time END"
    start = fix.get("start_time", "start_time")
    if "end_time" in repeated and config.elapsed_s_column:
        fix["end_time"] = (
            f"CASE WHEN end_time__repeated AND elapsed_s IS NOT NULL"
            f" AND abs(epoch(end_time + {hour} - ({start})) - elapsed_s) < abs(epoch(end_time - ({start})) - elapsed_s)"
            f" THEN end_time + {hour} ELSE end_time END"
        )
    end = fix.get("end_time", "end_time")
    if "answer_time" in repeated:
        fix["answer_time"] = (
            f"CASE WHEN answer_time__repeated AND answer_time < ({start}) AND answer_time + {hour} <= ({end})"
            f" THEN answer_time + {hour} ELSE answer_time END"
        )
    if not fix:
        return "SELECT * FROM parsed"
    return f"SELECT * REPLACE ({', '.join(f'{v} AS {k}' for k, v in fix.items())}) FROM parsed"


@dataclass
class MapReport:
    raw: int
    mapped: int
    rejected: int
    reasons: dict[str, int]


def map_partition(con: duckdb.DuckDBPyConnection, config: OperatorConfig, day: date) -> MapReport:
    """Rebuild mapped_cdrs and rejected_cdrs for one operator-day, atomically."""
    ensure_warehouse(con)
    files = registered_files(con, config, day)
    cols = [c for c in MAPPED_COLUMNS if c not in ("operator", "a_number_raw", "b_number_raw")]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM mapped_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day])
        con.execute("DELETE FROM rejected_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day])
        if files:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _judged AS {mapping_select(config, files, day)}")
            con.execute(_REJECT_DUPLICATES)
            con.execute(
                f"""INSERT INTO mapped_cdrs BY NAME
                SELECT {lit(config.name)} AS operator, a_number__raw AS a_number_raw, b_number__raw AS b_number_raw, {", ".join(cols)}
                FROM _judged WHERE reject_reason IS NULL"""
            )
            con.execute(
                f"""INSERT INTO rejected_cdrs
                SELECT {lit(config.name)}, partition_date, source_file, source_line, reject_reason, raw_record
                FROM _judged WHERE reject_reason IS NOT NULL"""
            )
            con.execute("DROP TABLE _judged")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    mapped_n = con.execute("SELECT count(*) FROM mapped_cdrs WHERE operator = ? AND partition_date = ?", [config.name, day]).fetchone()[0]
    reasons = dict(
        con.execute(
            """SELECT regexp_replace(reason, ':.*$', '') AS r, count(*) FROM rejected_cdrs
               WHERE operator = ? AND partition_date = ? GROUP BY r ORDER BY 2 DESC""",
            [config.name, day],
        ).fetchall()
    )
    return MapReport(raw=raw_rows(con, config.name, day), mapped=mapped_n, rejected=sum(reasons.values()), reasons=reasons)
