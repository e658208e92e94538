"""Staged rows -> mapped_cdrs and rejected_cdrs, for many operator-days in one pass.

Every data line of a registered file is one row of `ingest_rows` (see registry.py); mapping a
partition copies its canonical rows to `mapped_cdrs` and its rejects (with reason and raw record)
to `rejected_cdrs`, after resolving duplicate call_ids (the first by file, line is kept; the others
are rejected). All requested days are replaced in one transaction (delete-then-insert): atomic for
the whole batch, so a failure leaves every day as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import duckdb

from voicefw_assets.contracts import MAPPED_COLUMNS
from voicefw_assets.ingest.registry import ensure_warehouse
from voicefw_assets.ingest.sql import lit
from voicefw_assets.operators import OperatorConfig

_MAPPED = [c for c in MAPPED_COLUMNS if c != "operator"]


@dataclass
class MapReport:
    lines: int  # data lines of the day's files placed on this day (counted from the bytes at registration)
    mapped: int
    rejected: int
    reasons: dict[str, int] = field(default_factory=dict)  # reject kind -> rows
    flags: dict[str, int] = field(default_factory=dict)  # quality flag -> mapped rows carrying it
    files: int = 0

    @property
    def raw(self) -> int:
        return self.lines


def map_partitions(con: duckdb.DuckDBPyConnection, config: OperatorConfig, days: Iterable[date]) -> dict[date, MapReport]:
    """Rebuild mapped_cdrs and rejected_cdrs for many days of one operator: one pass, one transaction."""
    ensure_warehouse(con)
    days = sorted(set(days))
    if not days:
        return {}
    op = config.name
    scope = "operator = $op AND list_contains($days, partition_date)"
    params = {"op": op, "days": days}
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM mapped_cdrs WHERE {scope}", params)
        con.execute(f"DELETE FROM rejected_cdrs WHERE {scope}", params)
        # duplicate call_ids among canonical rows: every occurrence after the first (by file, line)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE __vf_dupes AS
            SELECT partition_date, call_id, source_file, source_line,
                   first_value(source_file) OVER w AS first_file, first_value(source_line) OVER w AS first_line,
                   row_number() OVER w AS k
            FROM ingest_rows
            WHERE {scope} AND reject_reason IS NULL AND (partition_date, call_id) IN (
                SELECT (partition_date, call_id) FROM ingest_rows WHERE {scope} AND reject_reason IS NULL
                GROUP BY partition_date, call_id HAVING count(*) > 1)
            WINDOW w AS (PARTITION BY partition_date, call_id ORDER BY source_file, source_line)""",
            params,
        )
        con.execute("DELETE FROM __vf_dupes WHERE k = 1")
        con.execute(
            f"""INSERT INTO mapped_cdrs BY NAME
            SELECT operator, {", ".join(_MAPPED)} FROM ingest_rows r
            WHERE {scope} AND reject_reason IS NULL
              AND NOT EXISTS (SELECT 1 FROM __vf_dupes d WHERE d.source_file = r.source_file AND d.source_line = r.source_line)""",
            params,
        )
        con.execute(
            f"""INSERT INTO rejected_cdrs
            SELECT operator, partition_date, source_file, source_line, reject_reason, raw_record
            FROM ingest_rows WHERE {scope} AND reject_reason IS NOT NULL
            UNION ALL
            SELECT $op, d.partition_date, d.source_file, d.source_line,
                   'duplicate call_id: ' || d.call_id || ' (first at line ' || d.first_line || ' of ' || d.first_file || ')',
                   to_json(struct_pack(call_id := r.call_id, start_time := r.start_time, a_number := r.a_number_raw,
                                       b_number := r.b_number_raw))::VARCHAR
            FROM __vf_dupes d JOIN ingest_rows r
              ON r.source_file = d.source_file AND r.source_line = d.source_line AND r.operator = $op""",
            params,
        )
        con.execute("DROP TABLE __vf_dupes")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return partition_reports(con, op, days)


def map_partition(con: duckdb.DuckDBPyConnection, config: OperatorConfig, day: date) -> MapReport:
    """Rebuild mapped_cdrs and rejected_cdrs for one operator-day, atomically."""
    return map_partitions(con, config, [day])[day]


def partition_reports(con: duckdb.DuckDBPyConnection, operator: str, days: list[date]) -> dict[date, MapReport]:
    """Counts per day from the tables (no file is read)."""
    params = {"op": operator, "days": days}
    reports = {d: MapReport(0, 0, 0) for d in days}
    for d, lines, files in con.execute(
        """SELECT d.partition_date, sum(d.lines), count(DISTINCT d.path) FROM landing_file_days d JOIN landing_files f USING (path)
           WHERE f.operator = $op AND f.status = 'loaded' AND list_contains($days, d.partition_date) GROUP BY 1""", params
    ).fetchall():
        reports[d].lines, reports[d].files = int(lines), files
    for d, n in con.execute(
        "SELECT partition_date, count(*) FROM mapped_cdrs WHERE operator = $op AND list_contains($days, partition_date) GROUP BY 1", params
    ).fetchall():
        reports[d].mapped = n
    for d, kind, n in con.execute(
        """SELECT partition_date, regexp_replace(reason, ':.*$', '') AS kind, count(*) FROM rejected_cdrs
           WHERE operator = $op AND list_contains($days, partition_date) GROUP BY 1, 2 ORDER BY 3 DESC""", params
    ).fetchall():
        reports[d].reasons[kind] = n
        reports[d].rejected += n
    for d, flag, n in con.execute(
        """SELECT partition_date, flag, count(*) FROM (
               SELECT partition_date, unnest(quality_flags) AS flag FROM mapped_cdrs
               WHERE operator = $op AND list_contains($days, partition_date) AND quality_flags IS NOT NULL)
           GROUP BY 1, 2 ORDER BY 3 DESC""", params
    ).fetchall():
        reports[d].flags[flag] = n
    return reports


def raw_rows(con: duckdb.DuckDBPyConnection, operator: str, day: date) -> int:
    """Data lines of an operator-day, from the manifest (no file is read)."""
    return partition_reports(con, operator, [day])[day].lines


__all__ = ["MapReport", "map_partition", "map_partitions", "partition_reports", "raw_rows", "lit"]
