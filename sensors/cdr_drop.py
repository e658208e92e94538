"""cdr_drop_sensor: turns files dropped in $VOICEFW_HOME/landing/<operator>/ into ingest runs.

Each tick looks only at files newer than its cursor, oldest first, and stops early (peek cap,
run-request cap, time budget) so a landing zone with a large backlog is worked off over several
ticks instead of timing out one (ticks time out after 60 s). For every new or changed file it
reads the UTC days its calls start on (`peek_file_dates`, start-time column only) and requests
one `ingest_cdrs` run per operator x day touched.

- run_key = partition + hash of the fingerprints (path:size:mtime) of the files that touched it,
  so an identical re-drop, or a cursor reset, requests the same run_key and Dagster starts nothing.
- cursor = per operator folder {"arrived_ns": newest arrival handled, "at_arrival": fingerprints
  handled at that instant}. Arrival = max(mtime, ctime): a file moved in with `mv` keeps its old
  mtime but gets a new ctime, so it is still seen. Files are handled in (arrival, path) order, so
  everything at or below an operator's watermark is done. Resetting the cursor in the UI rescans
  everything, safely, because of the run keys.
- a folder whose operator_configs/<name>.yaml exists but is newer than the loaded code location
  waits (its watermark stays put, the skip reason asks for a reload); the other folders go on.
- a folder without operator_configs/<name>.yaml, a file the config's patterns do not claim, a
  file that cannot be read, or one with no call on a partition day is quarantined with a reason
  (never silently ignored). Empty files are passed over: an upload may still be starting.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from dagster import (
    DefaultSensorStatus,
    MultiPartitionKey,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from resources.landing import LandedFile, LandingZone
from voicefw_assets.ingest import UnreadableFile, peek_file_dates
from voicefw_assets.operators import operator_configs
from voicefw_assets.partitions import operator_partitions
from voicefw_assets.settings import operator_config_dir

INGEST_JOB_NAME = "ingest_cdrs"  # voicefw_assets/assets/ingest.py: ingest_job


@dataclass
class Watermark:
    """One operator's progress: the newest arrival handled and the fingerprints handled at it."""

    arrived_ns: int = -1
    at_arrival: set[str] = field(default_factory=set)

    def is_new(self, f: LandedFile) -> bool:
        return f.arrived_ns > self.arrived_ns or (f.arrived_ns == self.arrived_ns and f.fingerprint not in self.at_arrival)

    def advance(self, f: LandedFile) -> None:
        """Mark `f` handled. Files are handled in (arrival, path) order, so the watermark never goes back."""
        if f.arrived_ns > self.arrived_ns:
            self.arrived_ns, self.at_arrival = f.arrived_ns, set()
        self.at_arrival.add(f.fingerprint)


@dataclass
class Cursor:
    """A watermark per operator folder, so a folder that must wait never holds the others back."""

    marks: dict[str, Watermark] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> Cursor:
        data = json.loads(raw) if raw else {}
        return cls({op: Watermark(int(m["arrived_ns"]), set(m["at_arrival"])) for op, m in data.items()})

    def dump(self) -> str:
        return json.dumps(
            {op: {"arrived_ns": m.arrived_ns, "at_arrival": sorted(m.at_arrival)} for op, m in sorted(self.marks.items())}
        )

    def copy(self) -> Cursor:
        return Cursor({op: Watermark(m.arrived_ns, set(m.at_arrival)) for op, m in self.marks.items()})

    def is_new(self, f: LandedFile) -> bool:
        return self.marks.get(f.operator, Watermark()).is_new(f)

    def advance(self, f: LandedFile) -> None:
        self.marks.setdefault(f.operator, Watermark()).advance(f)


def run_key(operator: str, day: date, fingerprints: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(fingerprints)).encode()).hexdigest()[:16]
    return f"{operator}|{day.isoformat()}|{digest}"


@dataclass
class TickPlan:
    """What one tick decided; kept apart from Dagster types so it is easy to read and test."""

    cursor: Cursor
    partitions: dict[tuple[str, date], list[LandedFile]] = field(default_factory=lambda: defaultdict(list))
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    peeked: int = 0
    empty: int = 0
    pending: int = 0  # new files left for later ticks
    stopped_by: str | None = None  # which cap ended the tick early
    waiting: dict[str, int] = field(default_factory=dict)  # operator -> new files held until a code reload


def _quarantine(landing: LandingZone, f: LandedFile, reason: str, plan: TickPlan) -> None:
    try:
        landing.quarantine(f.path, reason, f.operator)
    except FileNotFoundError:  # moved meanwhile (a run's own sync quarantined it): nothing left to do
        pass
    plan.quarantined[str(f.path)] = reason


def plan_tick(
    landing: LandingZone,
    cursor: Cursor,
    max_runs: int,
    max_peeks: int,
    time_budget_s: float,
) -> TickPlan:
    """Handle new files oldest first until a cap is hit; the cursor covers exactly what was handled."""
    configs = operator_configs()
    loaded = set(operator_partitions.get_partition_keys())  # operators this code location can run
    new: list[tuple[LandedFile, str | None]] = []  # (file, quarantine reason known before peeking)
    waiting: dict[str, int] = {}
    for operator in landing.operators_present():
        config = configs.get(operator) if operator in loaded else None
        if config is None:
            fresh = [f for f in landing.list_files(operator) if cursor.is_new(f)]
            if (operator_config_dir() / f"{operator}.yaml").exists():
                # a config added after this code location loaded: keep the files for after a reload
                if fresh:
                    waiting[operator] = len(fresh)
                continue
            reason = f"no operator config for folder {operator!r} (expected operator_configs/{operator}.yaml)"
            new += [(f, reason) for f in fresh]
            continue
        claimed = landing.list_files(operator, config.file_patterns)
        claimed_paths = {f.path for f in claimed}
        new += [(f, None) for f in claimed if cursor.is_new(f)]
        reason = f"file name matches none of {list(config.file_patterns)} in operator_configs/{operator}.yaml"
        new += [(f, reason) for f in landing.list_files(operator) if f.path not in claimed_paths and cursor.is_new(f)]
    new.sort(key=lambda item: (item[0].arrived_ns, str(item[0].path)))

    plan = TickPlan(cursor=cursor.copy(), waiting=waiting)
    deadline = time.monotonic() + time_budget_s
    for i, (f, reason) in enumerate(new):
        to_peek = reason is None and f.size > 0
        if time.monotonic() > deadline:
            plan.stopped_by = f"time budget ({time_budget_s:.0f} s per tick)"
        elif to_peek and plan.peeked >= max_peeks:
            plan.stopped_by = f"peek cap ({max_peeks} files per tick)"
        if plan.stopped_by:
            plan.pending = len(new) - i
            break
        if to_peek:
            plan.peeked += 1
            try:
                days = peek_file_dates(configs[f.operator], f.path)
            except FileNotFoundError:  # gone since the listing (deleted, or already quarantined)
                plan.cursor.advance(f)
                continue
            except (UnreadableFile, OSError) as exc:
                days, reason = set(), f"unreadable: {exc}"
            if not days and reason is None:
                reason = "no call starts on a partition day (before the first partition date, or in the future)"
            touched = {(f.operator, d) for d in days}
            added = touched - plan.partitions.keys()
            if added and plan.partitions and len(plan.partitions) + len(added) > max_runs:
                # a file is never split across ticks; one file alone may exceed the cap
                plan.stopped_by = f"run cap ({max_runs} runs per tick)"
                plan.pending = len(new) - i
                break
            for key in touched:
                plan.partitions[key].append(f)
        if reason is not None:
            _quarantine(landing, f, reason, plan)
        elif f.size == 0:
            plan.empty += 1
        plan.cursor.advance(f)
    return plan


def build_cdr_drop_sensor(
    max_runs_per_tick: int | None = None,
    max_peeks_per_tick: int | None = None,
    time_budget_s: float | None = None,
    minimum_interval_seconds: int | None = None,
    name: str = "cdr_drop_sensor",
) -> SensorDefinition:
    """Caps default from VOICEFW_SENSOR_MAX_RUNS / _MAX_PEEKS / _TIME_BUDGET_S (25 / 200 / 40 s),
    the tick interval from VOICEFW_SENSOR_INTERVAL_S (30 s)."""
    minimum_interval_seconds = minimum_interval_seconds or int(os.environ.get("VOICEFW_SENSOR_INTERVAL_S", "30"))
    max_runs = max_runs_per_tick or int(os.environ.get("VOICEFW_SENSOR_MAX_RUNS", "25"))
    max_peeks = max_peeks_per_tick or int(os.environ.get("VOICEFW_SENSOR_MAX_PEEKS", "200"))
    budget = time_budget_s or float(os.environ.get("VOICEFW_SENSOR_TIME_BUDGET_S", "40"))

    @sensor(
        name=name,
        job_name=INGEST_JOB_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests ingest runs for the operator x day partitions that new files in landing/ touch.",
    )
    def _sensor(context: SensorEvaluationContext, landing: LandingZone) -> SensorResult:
        started = time.monotonic()
        plan = plan_tick(landing, Cursor.parse(context.cursor), max_runs, max_peeks, budget)
        requests = [
            RunRequest(
                run_key=run_key(operator, day, [f.fingerprint for f in files]),
                partition_key=MultiPartitionKey({"operator": operator, "date": day.isoformat()}),
                tags={"voicefw/files": str(len(files)), "voicefw/first_file": files[0].path.name[:200]},
            )
            for (operator, day), files in sorted(plan.partitions.items())
        ]
        elapsed = time.monotonic() - started
        summary = (
            f"{len(requests)} run(s), {plan.peeked} file(s) peeked, {len(plan.quarantined)} quarantined, "
            f"{plan.empty} empty, {plan.pending} left for later ticks"
            + (f" (stopped by the {plan.stopped_by})" if plan.stopped_by else "")
            + f", {elapsed:.2f} s"
        )
        context.log.info(summary)
        for operator, n in plan.waiting.items():
            context.log.warning(
                f"{n} new file(s) in landing/{operator}/ wait: operator_configs/{operator}.yaml appeared after "
                "this code location loaded; reload it (UI: Deployment > Reload) to ingest them"
            )
        for path, reason in plan.quarantined.items():
            context.log.warning(f"quarantined {path}: {reason}")
        if requests:
            return SensorResult(run_requests=requests, cursor=plan.cursor.dump())
        if plan.waiting:
            why = f"new files wait for a code location reload (new operator configs: {sorted(plan.waiting)}); {summary}"
        elif plan.quarantined or plan.empty:
            why = f"no new data to ingest: {summary}"
        else:
            why = f"no new files in {landing.landing_dir} since the cursor"
        return SensorResult(skip_reason=SkipReason(why), cursor=plan.cursor.dump())

    return _sensor


cdr_drop_sensor = build_cdr_drop_sensor()
