"""raw_cdrs -> mapped_cdrs + rejected_cdrs, per operator x UTC day, with blocking quality checks."""


from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    asset,
    define_asset_job,
    multi_asset,
)

from resources.landing import LandingZone
from resources.warehouse import WAREHOUSE_POOL, Warehouse
from voicefw_assets.ingest import map_partition, partition_checks, sync_landing
from voicefw_assets.operators import operator_configs
from voicefw_assets.partitions import cdr_partitions

GROUP = "ingest"


def operator_day(context: AssetExecutionContext) -> tuple[str, date]:
    key = context.partition_key
    assert isinstance(key, MultiPartitionKey), key
    dims = key.keys_by_dimension
    return dims["operator"], date.fromisoformat(dims["date"])


def _md_table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines)


@asset(
    partitions_def=cdr_partitions,
    pool=WAREHOUSE_POOL,
    group_name=GROUP,
    kinds={"duckdb", "csv"},
    description="Every landed CDR row of an operator-day: the landed files themselves, registered with sha256, "
    "days and malformed lines; query them as the DuckDB view raw.<operator>. Quarantines unreadable and duplicate files.",
)
def raw_cdrs(context: AssetExecutionContext, warehouse: Warehouse, landing: LandingZone) -> MaterializeResult:
    operator, day = operator_day(context)
    config = operator_configs()[operator]
    with warehouse.connect() as con:
        report = sync_landing(con, config, landing, context.log)
        per_file = con.execute(
            """SELECT d.path, d.lines FROM landing_file_days d JOIN landing_files f USING (path)
               WHERE f.operator = ? AND f.status = 'loaded' AND d.partition_date = ? ORDER BY 1""",
            [operator, day],
        ).fetchall()
    rows = sum(n for _, n in per_file)
    if rows == 0:
        context.log.warning(f"no raw rows for {operator} on {day}: nothing landed for that day (yet)")
    metadata = {
        "dagster/row_count": rows,
        "files": len(per_file),
        "files_loaded_this_run": len(report.loaded),
        "files_quarantined_this_run": len(report.quarantined),
        "rows_by_file": MetadataValue.md(_md_table(per_file, ("file", "rows"))),
    }
    if report.quarantined:
        metadata["quarantined"] = MetadataValue.md(_md_table(sorted(report.quarantined.items()), ("file", "reason")))
    return MaterializeResult(metadata=metadata)


def _checks() -> list[AssetCheckSpec]:
    specs = {
        "rows_reconcile": "every raw row of the partition is either mapped or rejected",
        "unique_call_id": "(operator, call_id) is unique",
        "times_inside_partition": "every start_time falls on the partition's UTC day; end >= start",
        "canonical_contract": "rows satisfy the canonical contract (declared in pandera, checked in SQL on the table)",
    }
    return [AssetCheckSpec(name, asset="mapped_cdrs", blocking=True, description=d) for name, d in specs.items()]


@multi_asset(
    specs=[
        AssetSpec(
            "mapped_cdrs",
            deps=[raw_cdrs],
            group_name=GROUP,
            kinds={"duckdb"},
            description="Canonical CDRs (DESIGN.md section 3): UTC times, E.164 numbers, canonical dispositions.",
        ),
        AssetSpec(
            "rejected_cdrs",
            deps=[raw_cdrs],
            group_name=GROUP,
            kinds={"duckdb"},
            description="Raw rows that could not be mapped, with source_file, source_line and a reason.",
        ),
    ],
    partitions_def=cdr_partitions,
    check_specs=_checks(),
    pool=WAREHOUSE_POOL,
)
def map_cdrs(context: AssetExecutionContext, warehouse: Warehouse):
    operator, day = operator_day(context)
    config = operator_configs()[operator]
    with warehouse.connect() as con:
        rep = map_partition(con, config, day)
        checks = partition_checks(con, operator, [day])[day]
        cur = con.execute(
            """SELECT call_id, start_time, a_number, b_number, ingress_trunk, disposition, ring_s FROM mapped_cdrs
               WHERE operator = ? AND partition_date = ? ORDER BY source_file, source_line LIMIT 5""",
            [operator, day],
        )
        head = cur.fetchall()
        samples = con.execute(
            """SELECT reason, source_file, source_line FROM rejected_cdrs
               WHERE operator = ? AND partition_date = ? ORDER BY source_file, source_line LIMIT 10""",
            [operator, day],
        ).fetchall()

    cols = ("call_id", "start_time", "a_number", "b_number", "ingress_trunk", "disposition", "ring_s")
    preview = _md_table(head, cols) if head else "(no rows)"
    yield MaterializeResult(
        asset_key="mapped_cdrs",
        metadata={
            "dagster/row_count": rep.mapped,
            "raw_rows": rep.raw,
            "rejected_rows": rep.rejected,
            "flagged_rows_by_flag": MetadataValue.md(_md_table(list(rep.flags.items()), ("quality flag", "rows")) if rep.flags else "(none)"),
            "preview": MetadataValue.md(preview),
        },
    )
    yield MaterializeResult(
        asset_key="rejected_cdrs",
        metadata={
            "dagster/row_count": rep.rejected,
            "reject_rate": round(rep.rejected / rep.raw, 6) if rep.raw else 0.0,
            "rejects_by_reason": MetadataValue.md(_md_table(list(rep.reasons.items()), ("reason", "rows")) if rep.reasons else "(none)"),
            "first_rejects": MetadataValue.md(_md_table(samples, ("reason", "file", "line")) if samples else "(none)"),
        },
    )
    for name, outcome in checks.items():
        yield AssetCheckResult(
            asset_key="mapped_cdrs",
            check_name=name,
            passed=outcome.passed,
            severity=AssetCheckSeverity.ERROR,
            metadata=outcome.metadata,
        )


ingest_job = define_asset_job(
    "ingest_cdrs",
    selection=["raw_cdrs", "mapped_cdrs", "rejected_cdrs"],
    description="Land, map and check one operator-day (what the drop sensor launches).",
)

ingest_assets = [raw_cdrs, map_cdrs]
