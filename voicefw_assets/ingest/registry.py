"""The landed-file registry: which files are read, what each one became, and its parsed rows.

One decision per file, shared by the drop sensor, `voicefw materialize` and the raw asset
(`decide_listed` from the listing alone, then `read_files` for what needs the bytes):

- wait: modified less than the settle time ago (or changed while being read): not read now
- unchanged: registered with the same size, mtime and config fingerprint
- empty: 0 bytes, or nothing after the header lines: stays in landing, no rows, never a duplicate
- quarantine (with a reason file): a symlink or special file, a name the config does not claim, a
  folder no config knows, unreadable (truncated/fake gzip, missing columns, most lines not text in
  the declared encoding), no call on a partition day, or (registration only) the same bytes as a
  registered file
- ingest: the days its calls start on

Registering a file reads its bytes once (sha256, line accounting, decoding) and maps every data
line in the same pass into `ingest_rows` (the parsed raw layer: canonical values, flags, reject
reasons). A batch of files is one transaction; the rows of each file must equal its byte-counted
data lines or the transaction fails. A file that vanishes or is quarantined by someone else
mid-way is skipped (a later run sees it), never an error for the other files.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa

from resources.landing import LandedFile, LandingZone
from voicefw_assets.contracts import INGEST_TABLES, SCHEMA_VERSION, STAGING_COLUMNS, WAREHOUSE_DDL
from voicefw_assets.ingest.files import FileChanged, LineReader, UnreadableFile, string_views
from voicefw_assets.ingest.numbers import ensure_e164_table
from voicefw_assets.ingest.rows import HeaderError, Layout, header_lines, parse_header, staging_select
from voicefw_assets.ingest.sql import lit, q
from voicefw_assets.operators import OperatorConfig
from voicefw_assets.settings import first_partition_date

TIMINGS: dict[str, float] = defaultdict(float)  # seconds per phase of registration, for benchmarks/ingest.py
BATCH_BYTES = 96 << 20  # text per SQL pass; a larger file is one batch of its own, streamed in parts
MOSTLY_BAD = 0.5  # a file whose data lines are mostly not text is quarantined as a whole

Action = Literal["wait", "unchanged", "empty", "ingest", "quarantine"]


def ensure_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ingest tables; rebuild them (from landing, on the next sync) when their shape changed."""
    con.execute("CREATE TABLE IF NOT EXISTS voicefw_schema (component VARCHAR PRIMARY KEY, version INTEGER NOT NULL)")
    row = con.execute("SELECT version FROM voicefw_schema WHERE component = 'ingest'").fetchall()
    if not row or row[0][0] != SCHEMA_VERSION:
        old = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
        if old & set(INGEST_TABLES):
            for t in INGEST_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {q(t)}")
        con.execute("INSERT OR REPLACE INTO voicefw_schema VALUES ('ingest', ?)", [SCHEMA_VERSION])
    con.execute(WAREHOUSE_DDL)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute("SET enable_progress_bar = false")  # it would print into run logs and the CLI
    ensure_e164_table(con)


def partition_range() -> tuple[date, date]:
    """Days that exist as partitions: the configured first date through tomorrow (UTC)."""
    today = datetime.now(timezone.utc).date()
    return date.fromisoformat(first_partition_date()), today + timedelta(days=1)


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Registered:
    """What the manifest knows about a path."""

    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    config: str | None
    days: tuple[date, ...]


@dataclass(frozen=True)
class FileDecision:
    file: LandedFile
    action: Action
    reason: str | None = None
    days: frozenset[date] = frozenset()


def unknown_operator_reason(operator: str) -> str:
    return f"no operator config for folder {operator!r} (expected operator_configs/{operator}.yaml)"


def unmatched_reason(config: OperatorConfig) -> str:
    return f"file name matches none of {list(config.file_patterns)} in operator_configs/{config.name}.yaml"


def decide_listed(f: LandedFile, config: OperatorConfig | None, known: dict[str, Registered] | None = None) -> FileDecision | None:
    """The decision the listing alone allows, or None when the bytes must be read."""
    if config is None:
        return FileDecision(f, "quarantine", unknown_operator_reason(f.operator))
    if f.kind != "file":
        target = ""
        if f.kind == "symlink":
            try:
                target = f" to {os.readlink(f.path)!r}"
            except OSError:
                pass
        return FileDecision(f, "quarantine", f"not a regular file ({f.kind}{target}): only regular files in landing are read")
    try:
        str(f.path).encode("utf-8")
    except UnicodeEncodeError:
        return FileDecision(f, "quarantine", "file name is not valid UTF-8")
    if not config.claims(f.path.name):
        return FileDecision(f, "quarantine", unmatched_reason(config))
    if not f.stable:
        return FileDecision(f, "wait", "modified less than the settle time ago")
    k = (known or {}).get(str(f.path))
    if k is not None and (k.size, k.mtime_ns, k.config) == (f.size, f.mtime_ns, config.fingerprint):
        return FileDecision(f, "unchanged", days=frozenset(k.days))
    if f.size == 0:
        return FileDecision(f, "empty")
    return None


# ---------------------------------------------------------------- manifest


def manifest(con: duckdb.DuckDBPyConnection, operator: str) -> dict[str, Registered]:
    """Registered (loaded or empty) files of an operator."""
    rows = con.execute(
        """SELECT f.path, size, mtime_ns, sha256, status, config,
                  coalesce(list(d.partition_date ORDER BY d.partition_date) FILTER (WHERE d.partition_date IS NOT NULL), [])
           FROM landing_files f LEFT JOIN landing_file_days d USING (path)
           WHERE operator = ? AND status IN ('loaded', 'empty') GROUP BY ALL""",
        [operator],
    ).fetchall()
    return {r[0]: Registered(r[1], r[2], r[3], r[4], r[5], tuple(r[6])) for r in rows}


def landed_days(con: duckdb.DuckDBPyConnection, operator: str) -> list[date]:
    """UTC days with registered rows of an operator (no file is read)."""
    return [r[0] for r in con.execute(
        """SELECT DISTINCT d.partition_date FROM landing_file_days d JOIN landing_files f USING (path)
           WHERE f.operator = ? AND f.status = 'loaded' ORDER BY 1""", [operator]).fetchall()]


# ---------------------------------------------------------------- reading + mapping


@dataclass
class FileOutcome:
    """What reading (and mapping) one file gave."""

    file: LandedFile
    action: Action
    reason: str | None = None
    days: dict[date, int] = field(default_factory=dict)  # data lines per partition day
    lines: int = 0
    header_lines: int = 0
    defect_lines: int = 0
    sha256: str | None = None
    encoding: str | None = None
    columns: tuple[str, ...] = ()
    home: date | None = None


class _Batch:
    """Files whose lines go through shared SQL passes and one transaction (opened at the first
    insert): lines are buffered up to BATCH_BYTES, then mapped straight into the target table,
    tagged with the batch's id. A file that turns out bad after some of its lines went in has them
    deleted again; `commit` summarizes the batch and records the manifest before the COMMIT. Rows
    are appended in batch order, so zone maps keep every `WHERE batch = ?` to this batch's rows."""

    def __init__(self, con, config: OperatorConfig, table: str, day_range, columns: tuple[str, ...] | None = None):
        self.con, self.config, self.table, self.day_range = con, config, table, day_range
        self.columns = columns  # only these staging columns (a peek needs the days, not the values)
        self.id = time.time_ns()  # increases run after run (one writer at a time)
        self.layouts: list[Layout] = []
        self.outcomes: list[FileOutcome] = []
        self.line_tables: list[tuple[int, pa.Table]] = []
        self.defects: list[tuple[int, int, str, str]] = []
        self.bytes = 0
        self.in_transaction = False
        self.inserted: set[int] = set()  # file_idx with rows in the table

    def add(self, file_idx: int, block) -> None:
        n = len(block)
        if not n:
            return
        t0 = time.perf_counter()
        self.line_tables.append((file_idx, pa.table({
            "file_idx": pa.repeat(pa.scalar(file_idx, pa.int32()), n),
            "line_no": pa.array(np.arange(block.first_line, block.first_line + n, dtype=np.int64)),
            "text": string_views(block),
        })))
        self.defects += [(file_idx, block.first_line + i, r, raw) for i, (r, raw) in block.defects.items()]
        self.bytes += len(block.data)
        TIMINGS["lines -> Arrow"] += time.perf_counter() - t0
        if self.bytes > BATCH_BYTES:
            self.flush()

    def drop(self, file_idx: int, path: str) -> None:
        """Forget a file that turned out bad: its buffered lines, and its rows if some went in."""
        self.line_tables = [(i, t) for i, t in self.line_tables if i != file_idx]
        self.defects = [d for d in self.defects if d[0] != file_idx]
        if file_idx in self.inserted:
            self.con.execute(f"DELETE FROM {self.table} WHERE batch = ? AND source_file = ?", [self.id, path])
            self.inserted.discard(file_idx)

    def flush(self) -> None:
        """Map the buffered lines into the table."""
        if not self.line_tables:
            return
        if not self.in_transaction:
            self.con.execute("BEGIN TRANSACTION")
            self.in_transaction = True
        lines = pa.concat_tables([t for _, t in self.line_tables])
        self.con.register("__vf_lines", lines)
        defects = None
        if self.defects:
            fi, ln, rs, rw = zip(*self.defects)
            self.con.register("__vf_defects", pa.table({"file_idx": pa.array(fi, pa.int32()), "line_no": pa.array(ln, pa.int64()),
                                                        "reason": pa.array(rs, pa.string()), "raw": pa.array(rw, pa.string())}))
            defects = "__vf_defects"
        try:
            t0 = time.perf_counter()
            select = staging_select(self.config, self.layouts, "__vf_lines", defects, self.day_range)
            rows = f"SELECT {lit(self.config.name)} AS operator, {self.id} AS batch, * FROM ({select})"
            if self.columns:  # DuckDB then computes only what these columns need
                rows = f"SELECT {', '.join(self.columns)} FROM ({rows})"
            self.con.execute(f"INSERT INTO {self.table} BY NAME {rows}")
            TIMINGS["map lines (SQL)"] += time.perf_counter() - t0
        except BaseException:
            self.rollback()
            raise
        finally:
            for view in ("__vf_lines", defects):
                if view:
                    try:
                        self.con.unregister(view)
                    except duckdb.Error:
                        pass
        self.inserted |= {i for i, _ in self.line_tables}
        self.line_tables, self.defects, self.bytes = [], [], 0

    def rollback(self) -> None:
        if self.in_transaction:
            self.con.execute("ROLLBACK")
            self.in_transaction = False

    def commit(self, on_batch) -> None:
        """Summarize the batch's rows and record the manifest, then COMMIT."""
        self.flush()
        t0 = time.perf_counter()
        try:
            if self.outcomes:
                if not self.in_transaction:
                    self.con.execute("BEGIN TRANSACTION")
                    self.in_transaction = True
                _summarize(self.con, self.table, self.id, self.outcomes)
                if on_batch:
                    on_batch(self.outcomes)
            if self.in_transaction:
                self.con.execute("COMMIT")
                self.in_transaction = False
        except BaseException:
            self.rollback()
            raise
        TIMINGS["summarize + manifest"] += time.perf_counter() - t0


def read_files(
    con: duckdb.DuckDBPyConnection,
    config: OperatorConfig,
    files: list[LandedFile],
    landing_root: Path,
    table: str,
    known_sha: dict[str, str] | None = None,
    on_batch: Callable[[list[FileOutcome]], None] | None = None,
    columns: tuple[str, ...] | None = None,
) -> list[FileOutcome]:
    """Read and map `files` into `table` (staging layout). `on_batch` runs inside the transaction
    that moves each batch's rows in (to record them in the manifest). Returns one outcome per file;
    quarantine / wait / empty outcomes leave no rows in `table`."""
    day_range = partition_range()
    known_sha = dict(known_sha or {})  # path -> sha256 of loaded files, for duplicates
    hdr = header_lines(config)
    outcomes: list[FileOutcome] = []
    batch = _Batch(con, config, table, day_range, columns)
    for f in files:
        out = FileOutcome(f, "ingest")
        file_idx = len(batch.layouts)
        reader = LineReader(f.path, landing_root, config.csv.encoding, config.csv.max_line_bytes)
        try:
            blocks = reader.blocks()
            t0 = time.perf_counter()
            first = next(blocks, None)
            TIMINGS["read bytes -> lines (Python)"] += time.perf_counter() - t0
            first_text = first.text(0) if first is not None and len(first) and 0 not in first.defects else None
            out.columns = parse_header(config, first_text)
            batch.layouts.append(Layout(file_idx, str(f.path), out.columns))
            first_defect = None
            lines = _chain_first(first, blocks)
            while True:
                t0 = time.perf_counter()
                b = next(lines, None)
                TIMINGS["read bytes -> lines (Python)"] += time.perf_counter() - t0
                if b is None:
                    break
                if first_defect is None and b.defects:
                    first_defect = next(iter(b.defects.values()))[0]
                batch.add(file_idx, b)
            out.lines, out.header_lines, out.defect_lines = reader.lines, min(hdr, reader.lines), reader.defect_lines
            out.sha256, out.encoding = reader.sha256, reader.encoding
            data_lines = out.lines - out.header_lines
            twin = next((p for p, s in known_sha.items() if s == reader.sha256 and p != str(f.path)), None)
            if data_lines <= 0:
                out.action = "empty"
            elif twin is not None:
                out.action, out.reason = "quarantine", f"duplicate: same bytes (sha256 {reader.sha256[:12]}) as already registered {twin}"
            elif out.defect_lines > MOSTLY_BAD * data_lines:
                out.action = "quarantine"
                out.reason = f"{out.defect_lines} of {data_lines} data lines are not text in {reader.encoding} (first: {first_defect})"
        except (HeaderError, UnreadableFile) as exc:
            out.action, out.reason = "quarantine", str(exc)
        except FileChanged as exc:
            out.action, out.reason = "wait", str(exc)
        except FileNotFoundError as exc:
            out.action, out.reason = "wait", f"vanished while being read: {exc}"
        except BaseException:
            batch.rollback()
            raise
        if out.action != "ingest":
            if len(batch.layouts) > file_idx:
                batch.drop(file_idx, str(f.path))
                batch.layouts.pop()
            outcomes.append(out)
            continue
        known_sha[str(f.path)] = out.sha256
        batch.outcomes.append(out)
        if batch.bytes > BATCH_BYTES or batch.inserted:
            batch.commit(on_batch)
            outcomes.extend(batch.outcomes)
            batch = _Batch(con, config, table, day_range, columns)
    batch.commit(on_batch)
    outcomes.extend(batch.outcomes)
    return outcomes


def _chain_first(first, rest):
    if first is not None:
        yield first
    yield from rest


def _summarize(con, table: str, batch: int, outcomes: list[FileOutcome]) -> None:
    """Per file: data lines per day from its rows; rows without an in-range start go to the
    file's first day (its home), where they are rejected with their reason. A file whose rows
    do not equal its byte-counted data lines is a bug: the transaction fails."""
    paths = [str(o.file.path) for o in outcomes]
    got: dict[str, dict] = {}
    for path, day, n in con.execute(
        f"SELECT source_file, partition_date, count(*) FROM {table} WHERE batch = ? AND list_contains(?, source_file) GROUP BY ALL",
        [batch, paths]
    ).fetchall():
        got.setdefault(path, {})[day] = n
    for o in outcomes:
        days = got.get(str(o.file.path), {})
        rows = sum(days.values())
        if rows != o.lines - o.header_lines:
            raise RuntimeError(f"line accounting broke for {o.file.path}: {o.lines - o.header_lines} data lines, {rows} rows")
        placed = {d: n for d, n in days.items() if d is not None}
        o.home = min(placed, default=None)
        if o.home is None:
            o.action, o.reason = "quarantine", "no call starts on a partition day (before the first partition date, or in the future)"
            con.execute(f"DELETE FROM {table} WHERE batch = ? AND source_file = ?", [batch, str(o.file.path)])
            continue
        if None in days:
            con.execute(f"UPDATE {table} SET partition_date = ? WHERE batch = ? AND source_file = ? AND partition_date IS NULL",
                        [o.home, batch, str(o.file.path)])
            placed[o.home] = placed.get(o.home, 0) + days[None]
        o.days = placed


# ---------------------------------------------------------------- survey (no warehouse) and sync (in the run)


@dataclass
class Survey:
    """Decisions for the files of a landing zone, oldest arrival first (see the module doc)."""

    decisions: list[FileDecision] = field(default_factory=list)
    pending: int = 0  # files left undecided because a cap was hit
    stopped_by: str | None = None

    @property
    def partitions(self) -> dict[tuple[str, date], list[LandedFile]]:
        out: dict[tuple[str, date], list[LandedFile]] = defaultdict(list)
        for d in self.decisions:
            if d.action in ("ingest", "unchanged"):
                for day in sorted(d.days):
                    out[(d.file.operator, day)].append(d.file)
        return dict(out)

    def by_action(self, action: Action) -> list[FileDecision]:
        return [d for d in self.decisions if d.action == action]

    def apply_quarantine(self, landing: LandingZone, log: Callable[[str], None] | None = None) -> dict[str, str]:
        """Move every file decided "quarantine" (one already moved by someone else is skipped)."""
        moved = {}
        for d in self.by_action("quarantine"):
            if quarantine_file(landing, d.file, d.reason or "", log):
                moved[str(d.file.path)] = d.reason
        return moved


def quarantine_file(landing: LandingZone, f: LandedFile, reason: str, log=None) -> bool:
    try:
        landing.quarantine(f.path, reason, f.operator or "_landing")
    except FileNotFoundError:  # moved meanwhile (another run quarantined it): nothing left to do
        return False
    except OSError as exc:
        if log:
            log(f"could not quarantine {f.path}: {exc}")
        return False
    if log:
        log(f"quarantined {f.path}: {reason}")
    return True


STRAY_REASON = "not inside an operator folder (landing/<operator>/<file>)"


def stray_files(landing: LandingZone) -> list[LandedFile]:
    """What sits in landing/ outside any operator folder, as files of no operator (to quarantine)."""
    out = []
    for path in landing.stray_entries():
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # gone since the listing
            continue
        out.append(LandedFile("", path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, "symlink" if os.path.islink(path) else "file"))
    return out


def survey_landing(
    landing: LandingZone,
    configs: dict[str, OperatorConfig],
    *,
    known: dict[str, Registered] | None = None,
    is_new: Callable[[LandedFile], bool] = lambda f: True,
    max_peeks: int | None = None,
    deadline: float | None = None,
) -> Survey:
    """Decide every (new) entry of landing/: the same rules as registration, without the warehouse
    (duplicates are only known there). Files that need their bytes read are peeked (read and
    mapped in memory) for their days, oldest first, until `max_peeks` or the monotonic `deadline`."""
    entries: list[tuple[LandedFile, OperatorConfig | None]] = []
    for op in landing.operators_present():
        config = configs.get(op)
        entries += [(f, config) for f in landing.list_files(op) if is_new(f)]
    entries += [(f, None) for f in stray_files(landing) if is_new(f)]
    entries.sort(key=lambda e: (e[0].arrived_ns, str(e[0].path)))
    survey = Survey()
    peeks = 0
    for i, (f, config) in enumerate(entries):
        if f.operator == "":
            survey.decisions.append(FileDecision(f, "quarantine", STRAY_REASON))
            continue
        decision = decide_listed(f, config, known)
        if decision is None:
            if (max_peeks is not None and peeks >= max_peeks) or (deadline is not None and time.monotonic() > deadline):
                survey.stopped_by = f"peek cap ({max_peeks} files)" if max_peeks is not None and peeks >= max_peeks else "time budget"
                survey.pending = len(entries) - i
                break
            peeks += 1
            decision = peek_file(config, f, landing.landing_dir)
        survey.decisions.append(decision)
    return survey


_PEEK_CON: duckdb.DuckDBPyConnection | None = None
_PEEK_LOCK = threading.Lock()


def _peek_connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for peeks; each peek takes its own cursor (the CLI peeks files in parallel)."""
    global _PEEK_CON
    with _PEEK_LOCK:
        if _PEEK_CON is None:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET threads = 1")  # a sensor tick shares the machine with the runs
            ensure_e164_table(con)
            _PEEK_CON = con
    return _PEEK_CON


# what a peek keeps of each line: enough for the decision and the days (the same rows, not the values)
PEEK_COLUMNS = ("operator", "batch", "source_file", "partition_date")


def peek_file(config: OperatorConfig, f: LandedFile, landing_root: Path) -> FileDecision:
    """Read and map one file in memory: the decision registration would take (but duplicates)."""
    con = _peek_connection().cursor()
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __vf_peek ({', '.join(f'{c} {STAGING_COLUMNS[c]}' for c in PEEK_COLUMNS)})")
        [out] = read_files(con, config, [f], landing_root, "__vf_peek", columns=PEEK_COLUMNS)
        return FileDecision(f, out.action, out.reason, frozenset(out.days))
    finally:
        con.execute("DROP TABLE IF EXISTS __vf_peek")
        con.close()


def peek_file_dates(config: OperatorConfig, path: Path) -> set[date]:
    """The UTC days a file's calls start on; raises UnreadableFile with the reason it would be quarantined."""
    st = os.lstat(path)
    f = LandedFile(config.name, Path(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    d = decide_listed(f, config) or peek_file(config, f, Path(path).parent.parent)
    if d.action == "quarantine":
        raise UnreadableFile(d.reason)
    return set(d.days)


@dataclass
class SyncReport:
    loaded: dict[str, int] = field(default_factory=dict)  # path -> data lines
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    unchanged: int = 0
    empty: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # path -> why it is not read yet
    dates_touched: set[date] = field(default_factory=set)


def sync_landing(con: duckdb.DuckDBPyConnection, config: OperatorConfig, landing: LandingZone, log=None) -> SyncReport:
    """Register every new or changed file of one operator (reading and mapping it into
    ingest_rows); quarantine what cannot be read. Idempotent."""
    ensure_warehouse(con)
    say = (lambda m: log.warning(m)) if log is not None and hasattr(log, "warning") else log
    report = SyncReport()
    known = manifest(con, config.name)
    listed = _settled_listing(landing, config.name, say)
    to_read: list[LandedFile] = []
    for f in listed:
        d = decide_listed(f, config, known)
        if d is None:
            k = known.get(str(f.path))
            if k is not None and k.size == f.size and k.config == config.fingerprint and k.sha256 and _same_bytes(f, k.sha256):
                con.execute("UPDATE landing_files SET mtime_ns = ? WHERE path = ?", [f.mtime_ns, str(f.path)])
                report.unchanged += 1
                continue
            to_read.append(f)
        elif d.action == "quarantine":
            _record(con, config, FileOutcome(f, "quarantine", d.reason))
            if quarantine_file(landing, f, d.reason or "", say):
                report.quarantined[str(f.path)] = d.reason
        elif d.action == "wait":
            report.waiting[str(f.path)] = d.reason or ""
        elif d.action == "unchanged":
            report.unchanged += 1
        elif d.action == "empty":
            _unregister(con, [str(f.path)], report, known)
            _record(con, config, FileOutcome(f, "empty"))
            report.empty.append(str(f.path))
    _unregister(con, [str(f.path) for f in to_read if str(f.path) in known], report, known)
    known_sha = {p: k.sha256 for p, k in manifest(con, config.name).items() if k.status == "loaded" and k.sha256}

    def record(batch: list[FileOutcome]) -> None:
        _record(con, config, *batch)

    for o in read_files(con, config, to_read, landing.landing_dir, "ingest_rows", known_sha, on_batch=record):
        path = str(o.file.path)
        if o.action == "ingest":
            report.loaded[path] = sum(o.days.values())
            report.dates_touched |= set(o.days)
        elif o.action == "empty":
            _record(con, config, o)
            report.empty.append(path)
        elif o.action == "wait":
            report.waiting[path] = o.reason or ""
        else:
            _record(con, config, o)
            if quarantine_file(landing, o.file, o.reason or "", say):
                report.quarantined[path] = o.reason
    if report.loaded or report.quarantined or report.dates_touched:
        con.execute(f"CREATE OR REPLACE VIEW raw.{q(config.name)} AS SELECT * FROM ingest_rows WHERE operator = {lit(config.name)}")
    return report


def _settled_listing(landing: LandingZone, operator: str, say=None) -> list[LandedFile]:
    """The operator's files, oldest arrival first. A run started for a file modified less than the
    settle time ago (a sensor tick can be that quick) waits until it is old enough, at most one
    settle time, instead of skipping it: a file that stops changing would otherwise not be read
    until something else touches its partition. Files still changing after that stay "wait"."""
    listed = landing.list_files(operator)
    young = [f for f in listed if f.kind == "file" and not f.stable]
    if young:
        settle_ns = int(landing.settle_seconds * 1e9)
        wait_s = max(0.0, (max(f.ctime_ns for f in young) + settle_ns - time.time_ns()) / 1e9)
        wait_s = min(wait_s, landing.settle_seconds) + 0.05
        if say:
            say(f"waiting {wait_s:.0f} s for {len(young)} file(s) modified less than {landing.settle_seconds:.0f} s ago")
        time.sleep(wait_s)
        listed = landing.list_files(operator)
    return sorted(listed, key=lambda f: (f.arrived_ns, str(f.path)))


def _same_bytes(f: LandedFile, sha: str) -> bool:
    """A touched file (new mtime, same size): unchanged when its bytes hash the same."""
    from voicefw_assets.ingest.files import sha256_of

    try:
        return sha256_of(f.path) == sha
    except OSError:
        return False


def _unregister(con, paths: list[str], report: SyncReport, known: dict[str, Registered]) -> None:
    """Forget files about to be registered again (their rows and manifest entries)."""
    if not paths:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM ingest_rows WHERE list_contains(?, source_file)", [paths])
        con.execute("DELETE FROM landing_file_days WHERE list_contains(?, path)", [paths])
        con.execute("DELETE FROM landing_files WHERE list_contains(?, path)", [paths])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for p in paths:
        report.dates_touched |= set(known[p].days) if p in known else set()


def _record(con, config: OperatorConfig, *outcomes: FileOutcome) -> None:
    """The manifest entries of files (replacing earlier ones): one statement per table."""
    if not outcomes:
        return
    files, days = [], []
    for o in outcomes:
        status = {"ingest": "loaded", "empty": "empty"}.get(o.action, "duplicate" if (o.reason or "").startswith("duplicate") else "quarantined")
        path = str(o.file.path)
        files.append((config.name, path, o.file.size, o.file.mtime_ns, o.sha256, status, o.lines, o.header_lines,
                      o.lines - o.header_lines if status == "loaded" else 0, o.defect_lines, o.encoding, config.fingerprint,
                      list(o.columns) or None, o.home, o.reason))
        if status == "loaded":
            days += [(path, d, n) for d, n in sorted(o.days.items())]
    paths = [f[1] for f in files]
    con.execute("DELETE FROM landing_files WHERE list_contains(?, path)", [paths])
    con.execute("DELETE FROM landing_file_days WHERE list_contains(?, path)", [paths])
    names = ["operator", "path", "size", "mtime_ns", "sha256", "status", "lines", "header_lines", "data_lines", "defect_lines",
             "encoding", "config", "columns", "home_date", "detail"]
    rows = {n: [f[i] for f in files] for i, n in enumerate(names)}
    table = pa.table({n: pa.array(v, pa.list_(pa.string()) if n == "columns" else None) for n, v in rows.items()})
    con.register("__vf_files", table)
    con.execute("INSERT INTO landing_files BY NAME SELECT *, now() AS registered_at FROM __vf_files")
    con.unregister("__vf_files")
    if days:
        con.register("__vf_days", pa.table({"path": [d[0] for d in days], "partition_date": [d[1] for d in days],
                                            "lines": pa.array([d[2] for d in days], pa.int64())}))
        con.execute("INSERT INTO landing_file_days BY NAME SELECT * FROM __vf_days")
        con.unregister("__vf_days")
