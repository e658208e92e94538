"""`voicefw`: simulate drops, materialize the graph as real Dagster runs, serve the model, bring it all up."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

from voicefw_assets import export_ranges
from voicefw_assets.settings import REPO_ROOT, paths

LOCAL_DAGSTER_YAML = """\
# Local Dagster instance: SQLite storage under this folder (created by `voicefw`).
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1   # the duckdb_warehouse pool: one warehouse-writing step at a time
run_coordinator:       # runs here are short: look for queued runs every second, not every 5 s
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to ./.dagster_home (git-ignored) with a SQLite dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    yaml_file = home / "dagster.yaml"
    if not yaml_file.exists():
        yaml_file.write_text(LOCAL_DAGSTER_YAML)
    return home


# ---------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace) -> int:
    from voicefw_assets.simulate import Scenario, SimulationRefused, simulate

    home = Path(args.home) if args.home else paths().home
    t0 = time.perf_counter()
    try:
        scenario = Scenario(trunk_concentration=args.trunk_concentration, concentrate_from_day=args.concentrate_from_day,
                            intensity=args.intensity, late_ranges=args.late_ranges, new_countries=args.new_countries)
        summary = simulate(
            home,
            days=args.days,
            calls_per_day=args.calls_per_day,
            seed=args.seed,
            scenario=scenario,
            **({"start_date": date.fromisoformat(args.start_date)} if args.start_date else {}),
        )
    except SimulationRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"simulated into {home} in {time.perf_counter() - t0:.1f}s: {summary}")
    return 0


# ---------------------------------------------------------------- materialize


def landed_partitions(log=print) -> dict[str, set[date]]:
    """operator -> UTC days with landed data: the manifest for files already loaded, a cheap
    start-time peek for new ones. A file that cannot be peeked is quarantined here (same reason
    the raw asset would give), so nothing is silently left behind."""
    from resources import LandingZone, Warehouse
    from voicefw_assets.mapping import UnreadableFile, ensure_warehouse, manifest, peek_file_dates
    from voicefw_assets.operators import operator_configs

    landing, warehouse, configs = LandingZone(), Warehouse(), operator_configs()
    known: dict[str, tuple] = {}
    if warehouse.file.exists():
        with warehouse.connect() as con:
            ensure_warehouse(con)
            for op in configs:
                known |= manifest(con, op)
    out: dict[str, set[date]] = defaultdict(set)
    for op, config in configs.items():
        for f in landing.list_files(op, config.file_patterns):
            size, mtime_ns, _, days = known.get(str(f.path), (None, None, None, []))
            if (size, mtime_ns) == (f.size, f.mtime_ns):
                out[op].update(days)
                continue
            try:
                out[op].update(peek_file_dates(config, f.path))
            except UnreadableFile as exc:
                landing.quarantine(f.path, str(exc), op)
                log(f"quarantined {f.path}: {exc}")
    return dict(out)


def plan_runs(defs, selection: list[str] | None, landed: dict[str, set[date]]) -> list[tuple[list, str | None]]:
    """Split the selected assets into stages of one partitions definition, in dependency order, and
    expand each stage into its partition keys: [(asset keys, partition key or None), ...]."""
    from dagster import MultiPartitionKey, MultiPartitionsDefinition
    from dagster._core.selector.subset_selector import parse_asset_selection

    graph = defs.resolve_asset_graph()
    assets_defs = list(graph.assets_defs)
    keys = set(parse_asset_selection(assets_defs, selection)) if selection else set(graph.materializable_asset_keys)
    keys &= set(graph.materializable_asset_keys)
    order = [k for k in graph.toposorted_asset_keys if k in keys]
    stage: dict = {}
    for k in order:
        pdef = graph.get(k).partitions_def
        parents = [p for p in graph.get(k).parent_keys if p in stage]
        stage[k] = max((stage[p] + (graph.get(p).partitions_def != pdef) for p in parents), default=0)
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for k in order:
        groups[(stage[k], id(graph.get(k).partitions_def))].append(k)

    days = sorted(set().union(*landed.values())) if landed else []
    plan = []
    for (_, _), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        pdef = graph.get(group[0]).partitions_def
        if pdef is None:
            plan.append((group, None))
        elif isinstance(pdef, MultiPartitionsDefinition):
            valid = set(pdef.get_partition_keys())
            for op in sorted(landed):
                for d in sorted(landed[op]):
                    key = MultiPartitionKey({"operator": op, "date": d.isoformat()})
                    if key in valid:
                        plan.append((group, key))
        else:
            valid = set(pdef.get_partition_keys())
            plan += [(group, d.isoformat()) for d in days if d.isoformat() in valid]
    return plan


def cmd_materialize(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    from dagster import DagsterInstance, materialize

    from voicefw_assets.definitions import defs

    selection = [s for s in args.select.split(",") if s] if args.select else None
    landed = landed_partitions()
    if not landed:
        print(f"nothing landed under {paths().landing} (run `voicefw simulate` or drop CDR files there)")
        return 1
    plan = plan_runs(defs, selection, landed)
    assets_defs = [*(defs.assets or []), *(defs.asset_checks or [])]
    instance = DagsterInstance.get()
    failed = 0
    t_all = time.perf_counter()
    for i, (keys, pkey) in enumerate(plan, 1):
        names = ",".join(k.to_user_string() for k in keys)
        t0 = time.perf_counter()
        result = materialize(
            assets_defs,
            selection=keys,
            partition_key=pkey,
            instance=instance,
            resources=defs.resources,
            tags={"voicefw/launched_by": "voicefw materialize"},
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            raise_on_error=False,
        )
        checks = result.get_asset_check_evaluations()
        from dagster import AssetCheckSeverity

        bad = [c.check_name for c in checks if not c.passed and c.severity == AssetCheckSeverity.ERROR]
        status = "ok" if result.success and not bad else "FAILED" if not result.success else f"checks failed: {bad}"
        failed += status != "ok"
        print(
            f"[{i}/{len(plan)}] {names} {pkey or ''} -> {status} ({time.perf_counter() - t0:.1f}s, run {result.run_id[:8]})",
            flush=True,
        )
        for c in checks:  # a warning (e.g. a rejected candidate) is reported, not a failure
            if not c.passed:
                why = c.metadata["reasons"].value if "reasons" in c.metadata else c.description or ""
                print(f"    {c.check_name} ({c.severity.value.lower()}): {why}", flush=True)
    print(f"{len(plan)} runs in {time.perf_counter() - t_all:.1f}s, {failed} not ok; DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    return 1 if failed else 0


# ---------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    """Bundles in the model store, newest first, and which one the service serves."""
    ensure_dagster_home()
    import json

    from dagster import AssetKey, DagsterInstance

    from resources import ModelStore

    store = ModelStore()
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("serving_model"))
    serving = event.asset_materialization.metadata["version"].value if event and event.asset_materialization else None
    dirs = sorted((store.models_dir / v for v in store.versions()), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in dirs:
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
        meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
        pr_auc = (metrics.get(metrics.get("promoted", "lightgbm")) or {}).get("pr_auc")
        mark = "*" if path.name == serving else " "
        print(f"{mark} {path.name}  {meta.get('kind', 'lightgbm'):8}  pr_auc={pr_auc if pr_auc is None else round(pr_auc, 4)}  {path}")
    if not dirs:
        print(f"no bundles in {store.models_dir}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Serve an existing bundle (a rollback, or a re-promotion): verified like any promotion, then
    recorded as a serving_model materialization, which the service picks up on its next poll."""
    ensure_dagster_home()
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    from resources import ModelStore
    from voicefw_assets.model_bundle import BundleError, load_bundle

    path = ModelStore().models_dir / args.version
    try:
        bundle = load_bundle(path)  # every file's sha256, then the golden rows
    except (BundleError, OSError) as exc:
        print(f"refused: {path}: {exc}", file=sys.stderr)
        return 2
    DagsterInstance.get().report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey("serving_model"),
            description=f"promoted by hand: {args.reason}",
            metadata={"bundle_path": str(path), "version": bundle.version, "promoted_by": "voicefw promote", "reason": args.reason},
        )
    )
    print(f"serving_model -> {bundle.version} ({path}); the service swaps on its next poll")
    return 0


# ---------------------------------------------------------------- serve / up


def cmd_serve(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    from serving.server import run_server

    run_server(host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Dagster UI + daemon (sensors, automation, schedules) and the scoring service, until Ctrl-C."""
    ensure_dagster_home()
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.ui_port)]),
        subprocess.Popen([str(bin_dir / "voicefw"), "serve", "--host", args.host, "--port", str(args.port)]),
    ]
    print(f"Dagster UI: http://{args.host}:{args.ui_port}   scoring: http://{args.host}:{args.port}/schema   (Ctrl-C stops both)")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return max((p.returncode or 0) for p in procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicefw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write simulated CDR drops for every operator into $VOICEFW_HOME/landing",
                       description="Simulated CDR drops of three operators (three formats, with dirt) into "
                                   "$VOICEFW_HOME/landing and the ground truth into $VOICEFW_HOME/ground_truth. "
                                   "Never overwrites a landed file: a period already simulated is refused.")
    p.add_argument("--days", type=int, default=3, help="number of UTC days (default 3)")
    p.add_argument("--calls-per-day", type=int, default=20000, help="calls per day over all operators (default 20000)")
    p.add_argument("--seed", type=int, default=7, help="same seed and options, same bytes (default 7)")
    p.add_argument("--start-date", default=None, help="first simulated UTC day, YYYY-MM-DD (default 2026-11-01)")
    p.add_argument("--home", default=None, help="VOICEFW_HOME to write into (default: $VOICEFW_HOME or ./data)")
    p.add_argument("--trunk-concentration", type=float, default=0.0, metavar="SHARE",
                   help="share of each operator's calls moved onto its first ingress trunk (0-1, default 0)")
    p.add_argument("--concentrate-from-day", type=int, default=0, metavar="N",
                   help="apply --trunk-concentration from the N-th simulated day (0-based) on (default 0)")
    p.add_argument("--intensity", type=float, default=None, metavar="PER_MIN",
                   help="flash campaigns send all calls in bursts of this many calls/min per A-range (default: mixed)")
    p.add_argument("--late-ranges", type=int, default=0, metavar="N",
                   help="N extra flash providers whose ranges appear only in the last two days")
    p.add_argument("--new-countries", type=int, default=0, metavar="N",
                   help="N extra flash providers, last two days only, from countries seen nowhere else")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("materialize", help="materialize assets for every partition with landed data, as Dagster runs")
    p.add_argument("--select", default=None, help="asset selection as for `dagster asset materialize --select` (default: everything)")
    p.add_argument("--log-level", default="WARNING", help="Dagster console log level for the runs")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("models", help="list model bundles; * marks the one being served")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("promote", help="serve an existing bundle (rollback): verify it, record a serving_model materialization")
    p.add_argument("version", help="a folder name under $VOICEFW_HOME/models")
    p.add_argument("--reason", default="manual promotion", help="recorded with the materialization")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("export-ranges", help="write a day's suspicious ranges as a CSV or a Kamailio/OpenSIPS dialplan table")
    export_ranges.add_arguments(p)
    p.set_defaults(func=export_ranges.run)

    p = sub.add_parser("serve", help="run the scoring service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="Dagster UI + daemon and the scoring service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ui-port", type=int, default=3000)
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_up)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
