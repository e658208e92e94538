"""Which landed files the pipeline already has, so the sensor and `voicefw materialize` agree.

The warehouse's registry of landed files (path, size, mtime, when registered, the days it has
calls on) is the one record of what was ingested, whoever ingested it. A file counts as ingested
when the registry holds it with the same size and mtime; for the sensor also only once every one
of its operator-days has a `mapped_cdrs` materialization from after that registration (a run
killed between registering and mapping leaves the file to be run again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from resources.landing import LandedFile
from voicefw_assets.partitions import operator_day


@dataclass(frozen=True)
class Registered:
    size: int
    mtime_ns: int
    registered_s: float
    days: frozenset[date]


def read_registry(con) -> dict[str, Registered]:
    """path -> registration of every loaded (or empty) file; {} without a warehouse (con None)."""
    if con is None:
        return {}
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'landing_files'").fetchone()[0]:
        return {}
    rows = con.execute(
        """SELECT f.path, any_value(f.size), any_value(f.mtime_ns), epoch(any_value(f.registered_at)),
                  list(d.partition_date) FILTER (WHERE d.partition_date IS NOT NULL)
           FROM landing_files f LEFT JOIN landing_file_days d USING (path)
           WHERE f.status IN ('loaded', 'empty') GROUP BY f.path"""
    ).fetchall()
    return {path: Registered(size, mtime, reg, frozenset(days or [])) for path, size, mtime, reg, days in rows}


def already_ingested(
    files: list[LandedFile], registry: dict[str, Registered], instance: DagsterInstance | None = None
) -> dict[str, frozenset[date]]:
    """fingerprint -> days of each file in `files` that is already ingested (see module doc)."""
    same = {}
    for f in files:
        reg = registry.get(str(f.path))
        if reg is not None and (reg.size, reg.mtime_ns) == (f.size, f.mtime_ns):
            same[f.fingerprint] = (f, reg)
    if instance is None or not same:
        return {fp: reg.days for fp, (_, reg) in same.items()}
    cells = {str(operator_day(f.operator, d)) for f, reg in same.values() for d in reg.days}
    since = min(reg.registered_s for _, reg in same.values())
    mapped_at: dict[str, float] = {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("mapped_cdrs"), asset_partitions=sorted(cells), after_timestamp=since), limit=10 * len(cells) + 100
    ).records
    for r in records:
        key = r.partition_key
        mapped_at[key] = max(mapped_at.get(key, 0.0), r.timestamp)
    return {
        fp: reg.days
        for fp, (f, reg) in same.items()
        if all(mapped_at.get(str(operator_day(f.operator, d)), 0.0) >= reg.registered_s for d in reg.days)
    }
