"""raw_cdrs -> mapped_cdrs + rejected_cdrs, per operator x UTC day, with blocking quality checks.

One multi-asset with a single-run backfill policy: a run covers any rectangle of operator-days (a
`voicefw materialize`, a UI backfill, a sensor tick), registers each operator's new files once and
maps all of that operator's days in it, while every operator-day still gets its own
materializations, metadata and check results (yielded per partition, see docs/architecture.md).
"""


from collections import defaultdict
from collections.abc import Iterator
from datetime import date

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    BackfillPolicy,
    MetadataValue,
    define_asset_job,
    multi_asset,
)

from resources.landing import LandingZone
from resources.warehouse import WAREHOUSE_POOL, Warehouse
from voicefw_assets.assets.feeds import feed_specs
from voicefw_assets.ingest import map_partitions, partition_checks, sync_landing
from voicefw_assets.operators import operator_configs
from voicefw_assets.partitions import cdr_partitions, operator_day, split_operator_day

GROUP = "ingest"
RAW, MAPPED, REJECTED = AssetKey("raw_cdrs"), AssetKey("mapped_cdrs"), AssetKey("rejected_cdrs")

CHECKS = {
    "rows_reconcile": "every data line counted from the files' bytes is either mapped or rejected",
    "unique_call_id": "(operator, call_id) is unique",
    "times_inside_partition": "every start_time falls on the partition's UTC day; end >= start",
    "canonical_contract": "rows satisfy the canonical contract (declared in pandera, checked in SQL on the table)",
}


def _md_table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def days_by_operator(partition_keys) -> dict[str, list[date]]:
    out: dict[str, list[date]] = defaultdict(list)
    for key in partition_keys:
        operator, day = split_operator_day(key)
        out[operator].append(day)
    return {op: sorted(days) for op, days in sorted(out.items())}


@multi_asset(
    name="land_and_map_cdrs",
    specs=[
        AssetSpec(
            RAW,
            deps=feed_specs,
            group_name=GROUP,
            kinds={"duckdb", "csv"},
            description="Every landed CDR row of an operator-day: the landed files themselves, registered with sha256, "
            "days and malformed lines; query them as the DuckDB view raw.<operator>. Quarantines unreadable and duplicate files.",
        ),
        AssetSpec(
            MAPPED,
            deps=[RAW],
            group_name=GROUP,
            kinds={"duckdb"},
            description="Canonical CDRs (docs/architecture.md): UTC times, E.164 numbers, canonical dispositions.",
        ),
        AssetSpec(
            REJECTED,
            deps=[RAW],
            group_name=GROUP,
            kinds={"duckdb"},
            description="Raw rows that could not be mapped, with source_file, source_line and a reason.",
        ),
    ],
    # each evaluation carries its partition; the specs stay unpartitioned: see docs/architecture.md
    check_specs=[AssetCheckSpec(name, asset=MAPPED, blocking=True, description=d) for name, d in CHECKS.items()],
    partitions_def=cdr_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    can_subset=True,
    pool=WAREHOUSE_POOL,
)
def land_and_map_cdrs(context: AssetExecutionContext, warehouse: Warehouse, landing: LandingZone) -> Iterator:
    selected = context.selected_asset_keys
    checks = {k.name for k in context.selected_asset_check_keys}
    configs = operator_configs()
    for operator, days in days_by_operator(context.partition_keys).items():
        config = configs[operator]
        with warehouse.connect() as con:
            report = sync_landing(con, config, landing, context.log)
            if RAW in selected:
                yield from _raw_materializations(con, operator, days, report)
            if {MAPPED, REJECTED} & selected:
                reports = map_partitions(con, config, days)  # one pass and one transaction for all the days
                outcomes = partition_checks(con, operator, days)
                for day in days:
                    yield from _mapped_events(con, context, operator, day, reports[day], outcomes[day], selected, checks)


def _raw_materializations(con, operator: str, days: list[date], report) -> Iterator[AssetMaterialization]:
    per_file = con.execute(
        """SELECT d.partition_date, d.path, d.lines FROM landing_file_days d JOIN landing_files f USING (path)
           WHERE f.operator = ? AND f.status = 'loaded' AND list_contains(?::DATE[], d.partition_date) ORDER BY 1, 2""",
        [operator, days],
    ).fetchall()
    files: dict[date, list[tuple[str, int]]] = defaultdict(list)
    for day, path, rows in per_file:
        files[day].append((path, rows))
    for day in days:
        metadata = {
            "dagster/row_count": sum(n for _, n in files[day]),
            "files": len(files[day]),
            "files_loaded_this_run": len(report.loaded),
            "files_quarantined_this_run": len(report.quarantined),
            "rows_by_file": MetadataValue.md(_md_table(files[day], ("file", "rows"))),
        }
        if report.quarantined:
            metadata["quarantined"] = MetadataValue.md(_md_table(sorted(report.quarantined.items()), ("file", "reason")))
        yield AssetMaterialization(RAW, partition=str(operator_day(operator, day)), metadata=metadata)


def _mapped_events(con, context, operator: str, day: date, rep, outcomes, selected, checks) -> Iterator:
    partition = str(operator_day(operator, day))
    where = [operator, day]
    if rep.raw == 0:
        context.log.warning(f"no raw rows for {operator} on {day}: nothing landed for that day (yet)")
    if MAPPED in selected:
        cols = ("call_id", "start_time", "a_number", "b_number", "ingress_trunk", "disposition", "ring_s")
        head = con.execute(
            f"""SELECT {", ".join(cols)} FROM mapped_cdrs WHERE operator = ? AND partition_date = ?
                ORDER BY source_file, source_line LIMIT 5""",
            where,
        ).fetchall()
        flags = _md_table(list(rep.flags.items()), ("quality flag", "rows")) if rep.flags else "(none)"
        yield AssetMaterialization(
            MAPPED,
            partition=partition,
            metadata={
                "dagster/row_count": rep.mapped,
                "raw_rows": rep.raw,
                "rejected_rows": rep.rejected,
                "flagged_rows_by_flag": MetadataValue.md(flags),
                "preview": MetadataValue.md(_md_table(head, cols) if head else "(no rows)"),
            },
        )
    if REJECTED in selected:
        samples = con.execute(
            """SELECT reason, source_file, source_line FROM rejected_cdrs
               WHERE operator = ? AND partition_date = ? ORDER BY source_file, source_line LIMIT 10""",
            where,
        ).fetchall()
        yield AssetMaterialization(
            REJECTED,
            partition=partition,
            metadata={
                "dagster/row_count": rep.rejected,
                "reject_rate": round(rep.rejected / rep.raw, 6) if rep.raw else 0.0,
                "rejects_by_reason": MetadataValue.md(_md_table(list(rep.reasons.items()), ("reason", "rows")) if rep.reasons else "(none)"),
                "first_rejects": MetadataValue.md(_md_table(samples, ("reason", "file", "line")) if samples else "(none)"),
            },
        )
    for name, outcome in outcomes.items():
        if name in checks:
            facts = ", ".join(f"{k} {v}" for k, v in outcome.metadata.items())
            yield AssetCheckEvaluation(
                asset_key=MAPPED,
                check_name=name,
                passed=bool(outcome.passed),
                partition=partition,
                blocking=True,
                severity=AssetCheckSeverity.ERROR,
                description=None if outcome.passed else f"{operator} {day}: {name} failed ({facts})",
                metadata=outcome.metadata,
            )


ingest_job = define_asset_job(
    "ingest_cdrs",
    selection=[RAW, MAPPED, REJECTED],
    description="Land, map and check operator-days (what the drop sensor launches; a run may cover a range).",
)

ingest_assets = [land_and_map_cdrs]
