"""`voicefw`: simulate drops, materialize the graph as real Dagster runs, serve the model, bring it all up."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from voicefw_assets import export_ranges
from voicefw_assets.instance import ensure_dagster_home, quiet_dagster_warnings
from voicefw_assets.settings import REPO_ROOT, paths


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


def cmd_materialize(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    quiet_dagster_warnings()
    from dagster import DagsterInstance

    from resources import LandingZone, Warehouse
    from voicefw_assets.assets.feeds import feed_freshness_checks, feed_observation
    from voicefw_assets.definitions import defs
    from voicefw_assets.instance import owner_tags, sweep_dead_runs
    from voicefw_assets.launch import PlannedRun, landed, plan_runs, run_all
    from voicefw_assets.partitions import add_data_partitions, cdr_days, cdr_operators

    instance = DagsterInstance.get()
    sweep_dead_runs(instance)
    look = landed(LandingZone(), Warehouse())
    if look.young:  # a drop that just finished (or `voicefw simulate` a moment ago): wait once, then look again
        settle = LandingZone().settle_seconds
        print(f"waiting {settle:.0f} s for {sum(look.young.values())} file(s) modified less than VOICEFW_SETTLE_S={settle:.0f} s ago",
              flush=True)
        time.sleep(settle + 0.5)
        again = landed(LandingZone(), Warehouse())
        again.quarantined = {**look.quarantined, **again.quarantined}
        look = again
    for path, reason in look.quarantined.items():
        print(f"quarantined {path}: {reason}")
    for operator, n in look.waiting.items():
        print(f"{n} file(s) in landing/{operator}/ wait: operator_configs/{operator}.yaml is newer than this process (run again)")
    for operator, n in look.young.items():
        print(f"{n} file(s) in landing/{operator}/ are still being written and wait, with the files that arrived "
              "after them (run again when the upload is done)")
    cells = set(look.partitions) | look.ingested
    if not cells:
        print(f"nothing landed under {paths().landing} (run `voicefw simulate` or drop CDR files there)")
        return 1
    # every operator x day of the partitions, also an operator's day without a call (a 0-row
    # materialization that says "nothing landed", not a grey gap in the UI); one run then covers
    # all operators with the same days
    cells = {(op, d) for op in {op for op, _ in cells} for d in {d for _, d in cells}}
    for op, newest in look.newest.items():
        instance.report_runless_asset_event(feed_observation(op, newest.path.name, newest.arrived_ns, look.files[op]))
    add_data_partitions(instance, operators={op for op, _ in cells}, days={d for _, d in cells})
    order = [list(instance.get_dynamic_partitions(p.name)) for p in (cdr_operators, cdr_days)]
    plan = plan_runs(defs, args.select, cells, *order)
    if not args.select:
        plan.append(PlannedRun([], [], checks=[k for c in feed_freshness_checks for k in c.check_keys]))
    failed = run_all(plan, defs, instance, owner_tags(), args.log_level)
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}  (export it to use `dagster`/`dg` commands on this instance)")
    return 1 if failed else 0


# ---------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    """Bundles in the model store, newest first, and which one the service serves."""
    ensure_dagster_home()
    quiet_dagster_warnings()
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
    from voicefw_assets.bundle_verify import verify_in_child

    path = ModelStore().models_dir / args.version
    verdict = verify_in_child(path)  # checksums, parse, golden rows, in a child: a LightGBM abort is a refusal
    if not verdict.ok:
        print(f"refused: {path}: {verdict.reason}", file=sys.stderr)
        return 2
    DagsterInstance.get().report_runless_asset_event(
        AssetMaterialization(
            asset_key=AssetKey("serving_model"),
            description=f"promoted by hand: {args.reason}",
            metadata={"bundle_path": str(path), "version": verdict.version, "promoted_by": "voicefw promote", "reason": args.reason},
        )
    )
    print(f"serving_model -> {verdict.version} ({path}); the service swaps on its next poll")
    return 0


# ---------------------------------------------------------------- serve / up


def cmd_serve(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    from serving.server import run_server

    run_server(host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Dagster UI + daemon (sensors, automation, schedules) and the scoring service, until Ctrl-C."""
    home = ensure_dagster_home()
    quiet_dagster_warnings()
    from dagster import DagsterInstance

    from voicefw_assets.instance import hold_lock, sweep_dead_runs

    lock_fd = hold_lock(home / ".voicefw-up.lock")
    if lock_fd is None:
        print(f"another `voicefw up` runs on DAGSTER_HOME={home}; stop it first", file=sys.stderr)
        return 2
    with DagsterInstance.get() as instance:  # nothing of ours serves this home now: its unfinished runs are dead
        sweep_dead_runs(instance, orphans_of_daemon=True)
    bin_dir = Path(sys.executable).parent
    ui = [str(bin_dir / "dg"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "--host", args.host, "--port", str(args.ui_port),
          "--log-level", args.log_level]
    # Ctrl-C, a TERM, a hang-up: the same clean stop. Handlers (not an inherited "ignore", as in a
    # background job) also mean the children start with default signal handling.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    procs = [
        # each in its own process group, stopped as a group; the UI process holds the lock too:
        # while it lives, no other `voicefw up` sweeps its runs
        subprocess.Popen(ui, pass_fds=(lock_fd,), start_new_session=True),
        subprocess.Popen([str(bin_dir / "voicefw"), "serve", "--host", args.host, "--port", str(args.port)], start_new_session=True),
    ]
    print(f"Dagster UI: http://{args.host}:{args.ui_port}   scoring: http://{args.host}:{args.port}/schema   (Ctrl-C stops both)")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        for p in procs:
            _signal_group(p, signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # whatever of the group still runs (webserver, daemon, code server)
    return max((p.returncode or 0) for p in procs)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicefw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "simulate",
        help="write simulated CDR drops for every operator into $VOICEFW_HOME/landing",
        description="Write realistic CDR drops (each operator in its own format, with injected dirt: duplicate "
        "rows and files, malformed lines, empty and truncated files) and the ground truth of every call. "
        "Same arguments, same bytes. Never overwrites a landed file: a period already simulated is refused.",
    )
    p.add_argument("--days", type=int, default=3, help="how many UTC days of traffic (default: %(default)s)")
    p.add_argument("--calls-per-day", type=int, default=20000, help="calls per day across all operators (weekends get fewer; default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="random seed: the same seed and arguments write the same files (default: %(default)s)")
    p.add_argument("--start-date", default=None, help="first simulated UTC day, YYYY-MM-DD (default: 2026-11-01)")
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

    p = sub.add_parser(
        "materialize",
        help="materialize assets for every partition with landed data, as Dagster runs",
        description="Materialize the selection for every operator-day with landed data, as real runs in the "
        "Dagster instance of DAGSTER_HOME (default ./.dagster_home): as few runs as the assets' backfill "
        "policies allow, one summary line each. Exit status 1 if a run failed or a check did not pass.",
    )
    p.add_argument("--select", default=None, help="assets, comma-separated, in Dagster's selection syntax "
                   "(e.g. raw_cdrs,mapped_cdrs,rejected_cdrs or training_set*); default: everything")
    p.add_argument("--log-level", default="WARNING", help="lowest level of the runs' own log lines printed (default: %(default)s)")
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
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes; more than 1 needs VOICEFW_ONLINE_STORE=redis://host:port/db")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="Dagster UI + daemon and the scoring service")
    p.add_argument("--host", default="127.0.0.1", help="interface both listen on (default: %(default)s)")
    p.add_argument("--ui-port", type=int, default=3000, help="Dagster UI port (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="scoring service port (default: %(default)s)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level of the Dagster daemon and webserver (runs log INFO and up either way; default: %(default)s)")
    p.set_defaults(func=cmd_up)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
