"""The mapped_cdrs partition checks, in SQL on the warehouse tables (no pandas copy).

- rows_reconcile: for every file with lines on the day, its staged rows equal its data lines
  counted from the bytes; and the day's mapped + rejected rows equal the day's data lines. A line
  skipped anywhere makes one side short, so it can never pass.
- unique_call_id: (operator, call_id) is unique within the day.
- times_inside_partition: every start_time falls on the partition's UTC day; end >= start.
- canonical_contract: every rule of contracts.MappedCdrContract (rendered to SQL there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import duckdb

from voicefw_assets.contracts import contract_violations_sql


@dataclass
class CheckOutcome:
    passed: bool
    metadata: dict = field(default_factory=dict)


CHECK_NAMES = ("rows_reconcile", "unique_call_id", "times_inside_partition", "canonical_contract")


def partition_checks(con: duckdb.DuckDBPyConnection, operator: str, days: list[date]) -> dict[date, dict[str, CheckOutcome]]:
    params = {"op": operator, "days": list(days)}
    scope = "operator = $op AND list_contains($days, partition_date)"
    out: dict[date, dict[str, CheckOutcome]] = {}
    lines = dict.fromkeys(days, 0)
    mapped = dict.fromkeys(days, 0)
    rejected = dict.fromkeys(days, 0)
    short_files: dict[date, list[str]] = {d: [] for d in days}
    for d, n in con.execute(
        """SELECT d.partition_date, sum(d.lines) FROM landing_file_days d JOIN landing_files f USING (path)
           WHERE f.operator = $op AND f.status = 'loaded' AND list_contains($days, d.partition_date) GROUP BY 1""", params
    ).fetchall():
        lines[d] = int(n)
    # every file on the day: rows staged (all its days) == data lines counted from its bytes
    for d, path, data_lines, staged in con.execute(
        """WITH files AS (
               SELECT DISTINCT d.partition_date, f.path, f.data_lines FROM landing_file_days d JOIN landing_files f USING (path)
               WHERE f.operator = $op AND f.status = 'loaded' AND list_contains($days, d.partition_date))
           SELECT files.partition_date, files.path, files.data_lines, coalesce(s.n, 0)
           FROM files LEFT JOIN (SELECT source_file, count(*) AS n FROM ingest_rows WHERE operator = $op
                                 AND source_file IN (SELECT path FROM files) GROUP BY 1) s ON s.source_file = files.path
           WHERE coalesce(s.n, 0) <> files.data_lines""", params
    ).fetchall():
        short_files[d].append(f"{path}: {data_lines} data lines, {staged} rows")
    for d, n in con.execute(f"SELECT partition_date, count(*) FROM rejected_cdrs WHERE {scope} GROUP BY 1", params).fetchall():
        rejected[d] = n
    # one scan of mapped_cdrs: row count, duplicates, times outside the day, and every contract rule
    extra = {
        "__duplicates": "count(*) - count(DISTINCT call_id)",
        "__outside": "count(*) FILTER (WHERE CAST(timezone('UTC', start_time) AS DATE) <> partition_date OR end_time < start_time)",
    }
    cur = con.execute(contract_violations_sql("mapped_cdrs", scope, extra), params)
    names = [c[0] for c in cur.description]
    contract = {r[0]: dict(zip(names[1:], r[1:])) for r in cur.fetchall()}
    for d, c in contract.items():
        mapped[d] = c["rows"]
    dupes = {d: c.pop("__duplicates") for d, c in contract.items()}
    outside = {d: c.pop("__outside") for d, c in contract.items()}
    for d in days:
        c = contract.get(d, {"rows": 0})
        broken = {k: v for k, v in c.items() if k != "rows" and v}
        out[d] = {
            "rows_reconcile": CheckOutcome(
                lines[d] == mapped[d] + rejected[d] and not short_files[d],
                {"lines": lines[d], "mapped": mapped[d], "rejected": rejected[d],
                 **({"files_short": "; ".join(short_files[d][:10])} if short_files[d] else {})},
            ),
            "unique_call_id": CheckOutcome(dupes.get(d, 0) == 0, {"duplicates": int(dupes.get(d, 0))}),
            "times_inside_partition": CheckOutcome(outside.get(d, 0) == 0, {"rows_outside": int(outside.get(d, 0))}),
            "canonical_contract": CheckOutcome(not broken, {"rows_validated": int(c["rows"]), **{f"violations.{k}": int(v) for k, v in broken.items()}}),
        }
    return out
