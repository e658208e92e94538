"""cdr_drop_sensor: turns files dropped in $VOICEFW_HOME/landing/<operator>/ into ingest runs.

Each tick looks only at files newer than its cursor, oldest first, and stops early (peek cap,
run-request cap, time budget) so a landing zone with a large backlog is worked off over several
ticks instead of timing out one (ticks time out after 60 s).

- Files the warehouse already has (sensors/ingested.py: registered with the same size and mtime,
  and mapped since) need nothing: after `voicefw materialize`, or with a reset cursor, the sensor
  starts no run. Checking that needs a glance at the warehouse; while a run writes it, the tick
  waits for the next one (the cursor stays put).
- For every other new or changed file it reads the UTC days its calls start on
  (the same read registration does, in memory), adds new operators and days to the partitions and
  requests ingest runs: one per operator x day rectangle (partitions.rectangles), so a tick's
  files are ingested in as few runs as possible (the ingest assets take partition ranges).
- run_key = the rectangle + a hash of the fingerprints (path:size:mtime) of the files in it: an
  identical re-drop requests the same run_key and Dagster starts nothing.
- cursor = per operator folder {"arrived_ns": newest arrival handled, "at_arrival": fingerprints
  handled at that instant, "observed_ns": when its feed was last observed}. Arrival = max(mtime,
  ctime): a file moved in with `mv` keeps its old mtime but gets a new ctime, so it is still seen.
- every operator feed (landing/<operator>) is observed when files arrive, and re-observed when its
  last observation is older than half the feed's allowed silence, so its freshness check can say
  "overdue" (voicefw_assets/assets/feeds.py).
- a folder whose operator_configs/<name>.yaml exists but is newer than the loaded code location
  waits (its watermark stays put, the skip reason asks for a reload); the other folders go on.
- each new file gets the decision registration would take (voicefw_assets.ingest: decide_listed,
  peek_file): a folder without operator_configs/<name>.yaml, a file at the top of landing/ (in no
  operator folder), a file the config's patterns do not claim, a symlink or special file, a file that cannot be read, or one with no call on a partition
  day is quarantined with a reason (never silently ignored); empty and header-only files stay in
  landing; a file modified within VOICEFW_SETTLE_S waits, and so do the files that arrived after it
  in its folder (the cursor does not pass it).
- a tick that does nothing logs nothing (its skip reason is in the tick history).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

from dagster import (
    AssetCheckKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from resources.landing import LandedFile, LandingZone
from resources.warehouse import Warehouse, WarehouseBusy
from sensors.ingested import already_ingested, read_registry
from voicefw_assets.assets.ingest import ingest_job
from voicefw_assets.assets.feeds import feed_check_job, feed_freshness_checks, feed_key, feed_observation, max_silence
from voicefw_assets.ingest import FileDecision, decide_listed, peek_file
from voicefw_assets.ingest.registry import STRAY_REASON, quarantine_file, stray_files, unknown_operator_reason, unmatched_reason
from voicefw_assets.operators import operator_configs
from voicefw_assets.partitions import LOADED_OPERATORS, cdr_days, cdr_operators, operator_day, range_tags, rectangles
from voicefw_assets.settings import operator_config_dir

@dataclass
class Watermark:
    """One operator's progress: the newest arrival handled and the fingerprints handled at it."""

    arrived_ns: int = -1
    at_arrival: set[str] = field(default_factory=set)
    observed_ns: int = 0  # when the operator's feed was last observed

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
        return cls(
            {op: Watermark(int(m["arrived_ns"]), set(m["at_arrival"]), int(m.get("observed_ns", 0))) for op, m in data.items()}
        )

    def dump(self) -> str:
        return json.dumps(
            {
                op: {"arrived_ns": m.arrived_ns, "at_arrival": sorted(m.at_arrival), "observed_ns": m.observed_ns}
                for op, m in sorted(self.marks.items())
            }
        )

    def copy(self) -> Cursor:
        return Cursor({op: Watermark(m.arrived_ns, set(m.at_arrival), m.observed_ns) for op, m in self.marks.items()})

    def is_new(self, f: LandedFile) -> bool:
        return self.marks.get(f.operator, Watermark()).is_new(f)

    def advance(self, f: LandedFile) -> None:
        self.marks.setdefault(f.operator, Watermark()).advance(f)


@dataclass
class TickPlan:
    """What one look at landing decided; kept apart from Dagster types so it is easy to read and test."""

    cursor: Cursor
    partitions: dict[tuple[str, date], list[LandedFile]] = field(default_factory=lambda: defaultdict(list))  # to ingest
    ingested: set[tuple[str, date]] = field(default_factory=set)  # operator-days of files already ingested
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    peeked: int = 0
    already: int = 0  # new files the warehouse already has
    empty: int = 0
    pending: int = 0  # new files left for later ticks
    stopped_by: str | None = None  # which cap ended the tick early
    waiting: dict[str, int] = field(default_factory=dict)  # operator -> new files held until a code reload
    young: dict[str, int] = field(default_factory=dict)  # operator -> files modified within VOICEFW_SETTLE_S
    newest: dict[str, LandedFile] = field(default_factory=dict)  # operator -> newest file in landing
    files: dict[str, int] = field(default_factory=dict)  # operator -> files in landing

    @property
    def did_something(self) -> bool:
        return bool(self.partitions or self.quarantined or self.waiting or self.already)


def _quarantine(landing: LandingZone, f: LandedFile, reason: str, plan: TickPlan) -> None:
    quarantine_file(landing, f, reason)  # a file another process moved meanwhile is skipped
    plan.quarantined[str(f.path)] = reason


def new_files(landing: LandingZone, cursor: Cursor) -> tuple[list[tuple[LandedFile, str | None]], TickPlan]:
    """Files newer than the cursor, oldest first, each with a quarantine reason known before any
    peek (unknown folder, unclaimed name); and a plan holding what the listing alone tells."""
    configs = operator_configs()
    new: list[tuple[LandedFile, str | None]] = []
    plan = TickPlan(cursor=cursor.copy())
    for operator in landing.operators_present():
        config = configs.get(operator) if operator in LOADED_OPERATORS else None
        if config is None:
            fresh = [f for f in landing.list_files(operator) if cursor.is_new(f)]
            if (operator_config_dir() / f"{operator}.yaml").exists():
                # a config added after this code location loaded: keep the files for after a reload
                if fresh:
                    plan.waiting[operator] = len(fresh)
                continue
            reason = unknown_operator_reason(operator)
            new += [(f, reason) for f in fresh]
            continue
        claimed = landing.list_files(operator, config.file_patterns)
        if claimed:
            plan.newest[operator] = max(claimed, key=lambda f: (f.arrived_ns, str(f.path)))
            plan.files[operator] = len(claimed)
        claimed_paths = {f.path for f in claimed}
        new += [(f, None) for f in claimed if cursor.is_new(f)]
        reason = unmatched_reason(config)
        new += [(f, reason) for f in landing.list_files(operator) if f.path not in claimed_paths and cursor.is_new(f)]
    new += [(f, STRAY_REASON) for f in stray_files(landing) if cursor.is_new(f)]  # files at the top of landing/
    new.sort(key=lambda item: (item[0].arrived_ns, str(item[0].path)))
    return new, plan


def plan_tick(
    landing: LandingZone,
    plan: TickPlan,
    new: list[tuple[LandedFile, str | None]],
    ingested: dict[str, frozenset[date]],
    max_runs: float = float("inf"),
    max_peeks: float = float("inf"),
    time_budget_s: float = float("inf"),
    decided: dict[str, FileDecision] | None = None,
) -> TickPlan:
    """Handle new files oldest first until a cap is hit; the cursor covers exactly what was handled.
    `ingested`: fingerprint -> days of the files the warehouse already has (no peek, no run);
    `decided`: decisions already taken (peek_all), by fingerprint."""
    configs = operator_configs()
    decided = decided or {}
    deadline = time.monotonic() + time_budget_s
    for i, (f, reason) in enumerate(new):
        if reason is None and f.fingerprint in ingested:
            plan.ingested |= {(f.operator, d) for d in ingested[f.fingerprint]}
            plan.already += 1
            plan.cursor.advance(f)
            continue
        to_peek = reason is None and f.size > 0
        if time.monotonic() > deadline:
            plan.stopped_by = f"time budget ({time_budget_s:.0f} s per tick)"
        elif to_peek and plan.peeked >= max_peeks:
            plan.stopped_by = f"peek cap ({max_peeks} files per tick)"
        if plan.stopped_by:
            plan.pending = len(new) - i
            break
        if reason is None and f.operator in plan.young:
            plan.pending += 1  # behind a file that is still settling: arrival order is kept
            continue
        if to_peek:
            plan.peeked += 1
            try:
                decision = decided.get(f.fingerprint) or decide(landing, configs[f.operator], f)
            except FileNotFoundError:  # gone since the listing (deleted, or quarantined by another process)
                plan.cursor.advance(f)
                continue
            except OSError as exc:
                decision = FileDecision(f, "quarantine", f"unreadable: {exc}")
            if decision.action == "wait":
                # still being written (or just finished): not past the cursor, looked at again next tick
                plan.young[f.operator] = plan.young.get(f.operator, 0) + 1
                continue
            if decision.action == "quarantine":
                reason = decision.reason
            days = set(decision.days)
            touched = {(f.operator, d) for d in days}
            added = touched - plan.partitions.keys()
            if added and plan.partitions and len(plan.partitions) + len(added) > max_runs:
                # a file is never split across ticks; one file alone may exceed the cap
                plan.stopped_by = f"partition cap ({max_runs} operator-days per tick)"
                plan.pending = len(new) - i
                break
            for key in touched:
                plan.partitions[key].append(f)
            if decision.action == "empty":
                plan.empty += 1
        elif reason is None and f.size == 0:
            plan.empty += 1
        if reason is not None:
            _quarantine(landing, f, reason, plan)
        plan.cursor.advance(f)
    return plan


def decide(landing: LandingZone, config, f: LandedFile) -> FileDecision:
    """Registration's decision for one file, its bytes read (and mapped in memory) if need be."""
    return decide_listed(f, config) or peek_file(config, f, landing.landing_dir)


def peek_all(landing: LandingZone, new: list[tuple[LandedFile, str | None]], ingested: dict[str, frozenset[date]],
             workers: int) -> dict[str, FileDecision]:
    """Decisions for every new file that must be read, `workers` files at a time (`voicefw
    materialize`, before any run starts; a sensor tick reads one file after the other, under its caps).
    A file that cannot be decided here is left to plan_tick, which says why."""
    configs = operator_configs()
    todo = [f for f, reason in new if reason is None and f.size > 0 and f.fingerprint not in ingested]

    def one(f: LandedFile) -> tuple[str, FileDecision | None]:
        try:
            return f.fingerprint, decide(landing, configs[f.operator], f)
        except OSError:
            return f.fingerprint, None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return {fp: d for fp, d in pool.map(one, todo) if d is not None}


def ingest_requests(plan: TickPlan, operator_order: list[str], day_order: list[str]) -> list[RunRequest]:
    """One run request per operator x day rectangle of the partitions to ingest. The orders are the
    partition keys' once this tick's new operators and days are added (sorted, after the known ones)."""
    cells = {(op, str(d)) for op, d in plan.partitions}
    operator_order = operator_order + sorted({op for op, _ in cells} - set(operator_order))
    day_order = day_order + sorted({d for _, d in cells} - set(day_order))
    requests = []
    for ops, days in rectangles(cells, operator_order, day_order):
        files = sorted({f.fingerprint for op in ops for d in days for f in plan.partitions.get((op, date.fromisoformat(d)), [])})
        digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
        span = f"{'+'.join(ops)}|{days[0]}..{days[-1]}"
        first = min((f for op in ops for d in days for f in plan.partitions.get((op, date.fromisoformat(d)), [])), key=lambda f: f.path)
        tags = {"voicefw/files": str(len(files)), "voicefw/first_file": first.path.name[:200]}
        if len(ops) == len(days) == 1:
            requests.append(RunRequest(job_name=ingest_job.name, run_key=f"{span}|{digest}", partition_key=operator_day(ops[0], days[0]), tags=tags))
        else:
            requests.append(RunRequest(job_name=ingest_job.name, run_key=f"{span}|{digest}", tags={**tags, **range_tags(ops, days)}))
    return requests


def feed_events(plan: TickPlan, now_ns: int) -> list:
    """Observations of the feeds that got files this tick, or whose last observation is getting old."""
    events = []
    for op, newest in plan.newest.items():
        mark = plan.cursor.marks.setdefault(op, Watermark())
        got_files = any(o == op for o, _ in plan.partitions) or any(o == op for o, _ in plan.ingested)
        if got_files or now_ns - mark.observed_ns > max_silence().total_seconds() * 1e9 / 2:
            events.append(feed_observation(op, newest.path.name, newest.arrived_ns, plan.files[op]))
            mark.observed_ns = now_ns
    return events


def resumed_feeds(before: Cursor, plan: TickPlan, now_ns: int) -> list[AssetCheckKey]:
    """Freshness checks of feeds that get new data after more than their allowed silence (or for the
    first time). Their checks most likely failed, and Dagster's freshness sensor leaves a failed
    check alone until a run evaluates it again: the drop sensor asks for that run."""
    silence_ns = max_silence().total_seconds() * 1e9
    resumed = {
        feed_key(op) for op in {op for op, _ in plan.partitions} if before.marks.get(op, Watermark()).arrived_ns < now_ns - silence_ns
    }
    return [k for c in feed_freshness_checks for k in c.check_keys if k.asset_key in resumed]


def build_cdr_drop_sensor(
    max_runs_per_tick: int | None = None,
    max_peeks_per_tick: int | None = None,
    time_budget_s: float | None = None,
    minimum_interval_seconds: int | None = None,
    name: str = "cdr_drop_sensor",
) -> SensorDefinition:
    """Caps default from VOICEFW_SENSOR_MAX_RUNS (operator-days per tick) / _MAX_PEEKS / _TIME_BUDGET_S
    (25 / 200 / 40 s), the tick interval from VOICEFW_SENSOR_INTERVAL_S (30 s)."""
    minimum_interval_seconds = minimum_interval_seconds or int(os.environ.get("VOICEFW_SENSOR_INTERVAL_S", "30"))
    max_runs = max_runs_per_tick or int(os.environ.get("VOICEFW_SENSOR_MAX_RUNS", "25"))
    max_peeks = max_peeks_per_tick or int(os.environ.get("VOICEFW_SENSOR_MAX_PEEKS", "200"))
    budget = time_budget_s or float(os.environ.get("VOICEFW_SENSOR_TIME_BUDGET_S", "40"))

    @sensor(
        name=name,
        jobs=[ingest_job, feed_check_job],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests ingest runs for the operator x day partitions that new files in landing/ touch, "
        "and observes each operator's landing feed.",
    )
    def _sensor(context: SensorEvaluationContext, landing: LandingZone, warehouse: Warehouse) -> SensorResult:
        started = time.monotonic()
        before = Cursor.parse(context.cursor)
        new, plan = new_files(landing, before)
        ingested: dict[str, frozenset[date]] = {}
        claimed = [f for f, reason in new if reason is None]
        if claimed:
            try:
                with warehouse.peek() as con:
                    ingested = already_ingested(claimed, read_registry(con), context.instance)
            except WarehouseBusy:
                return SensorResult(skip_reason=SkipReason(f"{len(claimed)} new file(s) wait: a run is writing the warehouse"))
        plan = plan_tick(landing, plan, new, ingested, max_runs, max_peeks, budget)
        known = {p: list(context.instance.get_dynamic_partitions(p.name)) for p in (cdr_operators, cdr_days)}
        requests = ingest_requests(plan, known[cdr_operators], known[cdr_days])
        seen = {cdr_operators: {op for op, _ in plan.partitions}, cdr_days: {str(d) for _, d in plan.partitions}}
        adds = [p.build_add_request(sorted(keys - set(known[p]))) for p, keys in seen.items() if keys - set(known[p])]
        now_ns = time.time_ns()
        observations = feed_events(plan, now_ns)
        check_keys = resumed_feeds(before, plan, now_ns)
        if check_keys:
            requests.append(RunRequest(job_name=feed_check_job.name, asset_check_keys=check_keys, run_key=f"feeds-resumed|{now_ns}"))
        summary = (
            f"{len(requests)} run(s) for {len(plan.partitions)} operator-day(s), {plan.peeked} file(s) peeked, "
            f"{plan.already} already ingested, {len(plan.quarantined)} quarantined, {plan.empty} empty, "
            f"{plan.pending} left for later ticks"
            + (f" (stopped by the {plan.stopped_by})" if plan.stopped_by else "")
            + f", {time.monotonic() - started:.2f} s"
        )
        if plan.did_something:
            context.log.info(summary)
        for operator, n in plan.waiting.items():
            context.log.warning(
                f"{n} new file(s) in landing/{operator}/ wait: operator_configs/{operator}.yaml appeared after "
                "this code location loaded; reload it (UI: Deployment > Reload) to ingest them"
            )
        for path, reason in plan.quarantined.items():
            context.log.warning(f"quarantined {path}: {reason}")
        extra = {
            "dynamic_partitions_requests": adds,
            "asset_events": observations,
            "cursor": plan.cursor.dump(),
        }
        if requests:
            return SensorResult(run_requests=requests, **extra)
        if plan.waiting:
            why = f"new files wait for a code location reload (new operator configs: {sorted(plan.waiting)}); {summary}"
        elif plan.did_something or plan.empty:
            why = f"no new data to ingest: {summary}"
        else:
            why = f"no new files in {landing.landing_dir} since the cursor"
        return SensorResult(skip_reason=SkipReason(why), **extra)

    return _sensor


cdr_drop_sensor = build_cdr_drop_sensor()
