"""The ingest engine: landed files -> registered, line-accounted rows -> mapped_cdrs / rejected_cdrs.

Modules (imports go one way: mapping -> registry -> rows -> fields/numbers/split -> files/sql):
`sql` quoting, `files` reading bytes into numbered lines, `split` lines into fields, `numbers`
E.164, `fields` one canonical field as SQL, `rows` the staging SELECT, `registry` decisions and
registration, `mapping` partitions, `checks` the partition checks in SQL.
"""

from voicefw_assets.ingest.checks import CheckOutcome, partition_checks
from voicefw_assets.ingest.files import FileChanged, UnreadableFile, UnsafeFile
from voicefw_assets.ingest.mapping import MapReport, map_partition, map_partitions, partition_reports, raw_rows
from voicefw_assets.ingest.numbers import e164_sql
from voicefw_assets.ingest.registry import (
    FileDecision,
    Registered,
    Survey,
    SyncReport,
    decide_listed,
    ensure_warehouse,
    landed_days,
    manifest,
    partition_range,
    peek_file,
    peek_file_dates,
    quarantine_file,
    survey_landing,
    sync_landing,
)

register_landing = sync_landing

__all__ = [
    "CheckOutcome", "FileChanged", "FileDecision", "MapReport", "Registered", "Survey", "SyncReport", "UnreadableFile",
    "UnsafeFile", "decide_listed", "e164_sql", "ensure_warehouse", "landed_days", "manifest", "map_partition",
    "map_partitions", "partition_checks", "partition_range", "partition_reports", "peek_file", "peek_file_dates",
    "quarantine_file", "raw_rows", "register_landing", "survey_landing", "sync_landing",
]
