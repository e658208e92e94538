"""`voicefw materialize`: the selected assets for every partition with landed data, as real Dagster
runs in the instance of DAGSTER_HOME, as few as the assets' backfill policies allow.

The plan is what Dagster's own backfill of the same partitions would launch: the selection in
stages of one partitions definition, in dependency order (operator x day, then day, then
unpartitioned, then day again); a stage of single-run assets becomes one partition-range run per
rectangle of partitions (the ingest assets: one run for all operators and days of `make run`),
any other stage one run per partition. Each run ends in one line; a run that failed says why in
one more line per failed check or step, without a stack trace for an expected failure.
"""

from __future__ import annotations

import os

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    MultiPartitionsDefinition,
    define_asset_job,
)

from voicefw_assets.partitions import consecutive, range_tags, rectangles

JOB_NAME = "__ephemeral_asset_job__"  # the name `dagster.materialize` gives its runs: ad-hoc asset runs in the UI
LAUNCHED_BY = {"voicefw/launched_by": "voicefw materialize"}


@dataclass
class PlannedRun:
    assets: list[AssetKey]
    partitions: list[str]  # the partition keys the run covers ([] unpartitioned)
    partition_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    checks: list[AssetCheckKey] = field(default_factory=list)  # a checks-only run (the feeds' freshness)
    needs: list[AssetKey] = field(default_factory=list)  # unpartitioned upstream assets the run cannot do without

    @property
    def label(self) -> str:
        names = ",".join(k.to_user_string() for k in self.assets) or ",".join(
            f"{c.asset_key.to_user_string()}:{c.name}" for c in self.checks
        )
        if not self.partitions:
            return names
        if len(self.partitions) == 1:
            return f"{names} {self.partitions[0]}"
        return f"{names} {self.tags['dagster/asset_partition_range_start']}...{self.tags['dagster/asset_partition_range_end']} ({len(self.partitions)} partitions)"


def _single_run(graph, keys) -> bool:
    policies = [graph.get(k).backfill_policy for k in keys]
    return all(p is not None and p.max_partitions_per_run is None for p in policies)  # BackfillPolicy.single_run()


def plan_runs(defs: Definitions, selection: str | None, cells: set[tuple[str, date]], operator_order: list[str],
              day_order: list[str]) -> list[PlannedRun]:
    """The runs for the selection (Dagster's selection syntax, default everything) over the
    operator-days in `cells`; the orders are those of the (dynamic) partition keys."""
    graph = defs.resolve_asset_graph()
    keys = set(graph.materializable_asset_keys)
    if selection:
        keys &= set(AssetSelection.from_coercible(selection.split(",")).resolve(graph))
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    stage: dict[AssetKey, int] = {}
    for k in order:
        pdef = graph.get(k).partitions_def
        parents = [p for p in graph.get(k).parent_keys if p in stage]
        stage[k] = max((stage[p] + (graph.get(p).partitions_def != pdef) for p in parents), default=0)
    groups: dict[tuple[int, int], list[AssetKey]] = defaultdict(list)
    for k in order:
        groups[(stage[k], id(graph.get(k).partitions_def))].append(k)

    str_cells = {(op, str(d)) for op, d in cells}
    days = [d for d in day_order if d in {d for _, d in str_cells}]
    plan: list[PlannedRun] = []
    for (_, _), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        pdef = graph.get(group[0]).partitions_def
        single = _single_run(graph, group)
        first = len(plan)
        if pdef is None:
            plan.append(PlannedRun(group, []))
        elif isinstance(pdef, MultiPartitionsDefinition):
            if single:
                for ops, ds in rectangles(str_cells, operator_order, day_order):
                    covered = [f"{d}|{op}" for d in ds for op in ops]
                    tags = range_tags(ops, ds)
                    if len(covered) == 1:
                        plan.append(PlannedRun(group, covered, partition_key=covered[0]))
                    else:
                        plan.append(PlannedRun(group, covered, tags=tags))
            else:
                plan += [PlannedRun(group, [f"{d}|{op}"], partition_key=f"{d}|{op}") for op, d in sorted(str_cells)]
        elif single:
            for run in consecutive(days, day_order):
                tags = {"dagster/asset_partition_range_start": run[0], "dagster/asset_partition_range_end": run[-1]}
                plan.append(PlannedRun(group, run, partition_key=run[0] if len(run) == 1 else None, tags={} if len(run) == 1 else tags))
        else:
            plan += [PlannedRun(group, [d], partition_key=d) for d in days]
        needs = sorted({p for k in group for p in graph.get(k).parent_keys
                        if p not in group and graph.get(p).is_materializable and graph.get(p).partitions_def is None})
        for run in plan[first:]:
            run.needs = needs
    return plan


@dataclass
class Outcome:
    ok: bool
    lines: list[str]  # why not, one line each
    run_id: str


def _check_reason(evaluation) -> str:
    """One line saying why a check failed: its description, else the reasons in its metadata."""
    if evaluation.description:
        return evaluation.description.strip().splitlines()[0]
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    for key in ("failures", "problems", "reasons"):
        if meta.get(key):
            return "; ".join(str(x) for x in meta[key]) if isinstance(meta[key], list) else str(meta[key])
    return ", ".join(f"{k}={v}" for k, v in meta.items() if isinstance(v, (int, float, str)))[:300]


def summarize(result, run: PlannedRun) -> Outcome:
    lines = []
    warned = []
    for e in result.get_asset_check_evaluations():
        if not e.passed:
            where = f" [{e.partition}]" if e.partition else ""
            name = f"{e.asset_key.to_user_string()}:{e.check_name}{where}"
            if e.severity == AssetCheckSeverity.WARN:  # e.g. a candidate model the gate rejected: the old one serves on
                warned.append(f"check {name} warns: {_check_reason(e)}")
            else:
                lines.append(f"check {name} failed: {_check_reason(e)}")
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is None or error.cls_name == "DagsterAssetCheckFailedError":
            continue  # an expected failure: the check lines above say why
        lines.append(f"step {event.step_key} failed: {error.cls_name}: {error.message.strip().splitlines()[0]}")
        lines += ["  " + line for line in error.to_string().strip().splitlines()[-12:]]
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    left = [k.to_user_string() for k in run.assets if k not in done]
    if left and lines:
        lines.append(f"not materialized: {', '.join(left)} (its upstream failed or a blocking check did not pass)")
    ok = result.success and not any(line.startswith("check ") for line in lines)
    return Outcome(ok, warned + lines, result.run_id)


def execute(run: PlannedRun, defs: Definitions, instance: DagsterInstance, tags: dict[str, str], log_level: str):
    """One real run, in this process, in the given instance."""
    from voicefw_assets.run_logs import terse_console_logger

    selection = AssetSelection.checks(*run.checks) if run.checks else AssetSelection.assets(*run.assets)
    job_defs = Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        jobs=[define_asset_job(JOB_NAME, selection=selection)],
        resources=defs.resources,
        loggers={"console": terse_console_logger},
        executor=defs.executor,
    )
    return job_defs.resolve_job_def(JOB_NAME).execute_in_process(
        instance=instance,
        partition_key=run.partition_key,
        tags={**LAUNCHED_BY, **tags, **run.tags},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        raise_on_error=False,
    )


def run_all(plan: list[PlannedRun], defs: Definitions, instance: DagsterInstance, tags: dict[str, str], log_level: str,
            out: Callable[[str], None] = print) -> int:
    """Execute the plan in order; returns how many runs were not ok."""
    failed = 0
    t_all = time.perf_counter()
    for i, run in enumerate(plan, 1):
        t0 = time.perf_counter()
        missing = [k.to_user_string() for k in run.needs if instance.get_latest_materialization_event(k) is None]
        if missing:  # e.g. scores when no model was ever promoted (its gate failed just now)
            failed += 1
            out(f"[{i}/{len(plan)}] {run.label} -> not run: needs {', '.join(missing)}, never materialized")
            continue
        outcome = summarize(execute(run, defs, instance, tags, log_level), run)
        failed += not outcome.ok
        status = "ok" if outcome.ok else "FAILED"
        out(f"[{i}/{len(plan)}] {run.label} -> {status} ({time.perf_counter() - t0:.1f}s, run {outcome.run_id[:8]})")
        for line in outcome.lines:
            out(f"    {line}")
    out(f"{len(plan)} runs in {time.perf_counter() - t_all:.1f}s, {failed} not ok")
    return failed


def landed(landing, warehouse):
    """Every file in landing, decided the way the drop sensor decides (sensors/cdr_drop.py, same
    quarantine rules), without its cursor or caps: the operator-days to run, including those of
    files the warehouse already has (`voicefw materialize` re-derives them; it is idempotent)."""
    from sensors.cdr_drop import Cursor, new_files, peek_all, plan_tick
    from sensors.ingested import already_ingested, read_registry

    new, plan = new_files(landing, Cursor())
    registry = {}
    if warehouse.file.exists():
        with warehouse.connect() as con:  # waits while another run writes
            registry = read_registry(con)
    ingested = already_ingested([f for f, why in new if why is None], registry)
    # no run is going yet: read the new files a core each (each peek itself on one thread)
    decided = peek_all(landing, new, ingested, workers=os.cpu_count() or 1)
    return plan_tick(landing, plan, new, ingested, decided=decided)
