"""Ingest benchmark: register + map simulated drops, beside DuckDB's bare scan of the same files.

    .venv/bin/python benchmarks/ingest.py --calls 10000000 [--days 14] [--home /tmp/vf-bench] [--cli]

Prints rows/s for raw+mapped (sync_landing + map_partition for every operator-day, the work the
raw_cdrs and mapped_cdrs assets do) and for a bare `count(*)` scan of the same files with the same
CSV dialect, each phase in its own process so its peak RSS is its own. With --cli it also runs
`voicefw materialize --select raw_cdrs,mapped_cdrs,rejected_cdrs` on a fresh warehouse and Dagster
home: the way a user runs it, one Dagster run per operator-day included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def phase_scan(home: Path) -> dict:
    import duckdb

    from resources.landing import LandingZone
    from voicefw_assets.mapping import file_columns, read_csv_sql
    from voicefw_assets.operators import operator_configs

    os.environ["VOICEFW_HOME"] = str(home)
    con = duckdb.connect()
    rows = 0
    t0 = time.perf_counter()
    for op, config in operator_configs().items():
        for f in LandingZone().list_files(op, config.file_patterns):
            try:
                scan = read_csv_sql(config, f.path, file_columns(config, f.path))
                rows += con.execute(f"SELECT count(*) FROM {scan}").fetchone()[0]
            except Exception:  # the truncated gzip and friends: a bare scan just fails on them
                continue
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def phase_ingest(home: Path) -> dict:
    from resources import LandingZone, Warehouse
    from voicefw_assets.mapping import map_partition, sync_landing
    from voicefw_assets.operators import operator_configs

    os.environ["VOICEFW_HOME"] = str(home)
    out = {"raw": 0, "mapped": 0, "rejected": 0, "partitions": 0}
    t0 = time.perf_counter()
    with Warehouse().connect() as con:
        for op, config in operator_configs().items():
            ts = time.perf_counter()
            report = sync_landing(con, config, LandingZone())
            out[f"register_{op}_s"] = round(time.perf_counter() - ts, 2)
            days = [r[0] for r in con.execute(
                "SELECT DISTINCT partition_date FROM landing_file_days JOIN landing_files USING (path) WHERE operator = ? ORDER BY 1", [op]
            ).fetchall()]
            tm = time.perf_counter()
            for day in days:
                rep = map_partition(con, config, day)
                out["raw"] += rep.raw
                out["mapped"] += rep.mapped
                out["rejected"] += rep.rejected
                out["partitions"] += 1
            out[f"map_{op}_s"] = round(time.perf_counter() - tm, 2)
            out["quarantined"] = out.get("quarantined", 0) + len(report.quarantined)
    out["seconds"] = time.perf_counter() - t0
    return out


def run_phase(name: str, home: Path) -> dict:
    """Run a phase in a fresh process; return its result and that process's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, __file__, "--phase", name, "--home", str(home)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = round(max(peak_kb, before) / 1024) if peak_kb > before else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--home", default="/tmp/voicefw-bench-ingest")
    ap.add_argument("--cli", action="store_true", help="also time `voicefw materialize` with Dagster runs")
    ap.add_argument("--phase", choices=["scan", "ingest"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    home = Path(args.home)
    if args.phase:
        print(json.dumps({"scan": phase_scan, "ingest": phase_ingest}[args.phase](home), default=str))
        return

    marker = home / f".simulated-{args.calls}-{args.days}-{args.seed}"
    if not marker.exists():
        shutil.rmtree(home, ignore_errors=True)
        from voicefw_assets.simulate import simulate

        t0 = time.perf_counter()
        summary = simulate(home, days=args.days, calls_per_day=args.calls // args.days, seed=args.seed)
        print(f"simulated {summary['calls']:,} calls into {home} in {time.perf_counter() - t0:.1f}s")
        marker.touch()
    backup = home / "landing.orig"  # quarantining moves files: restore the drop before each run
    if not backup.exists():
        shutil.copytree(home / "landing", backup)

    def fresh():
        for p in ("landing", "quarantine", "warehouse.duckdb", "warehouse.duckdb.wal", "dagster_home"):
            target = home / p
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        shutil.copytree(backup, home / "landing")

    fresh()
    size_mb = sum(p.stat().st_size for p in (home / "landing").rglob("*") if p.is_file()) / 1e6
    scan = run_phase("scan", home)
    ingest = run_phase("ingest", home)
    print(f"\nlanding: {size_mb:,.0f} MB, {ingest['partitions']} operator-day partitions")
    print(f"{'phase':<34}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    print(f"{'DuckDB bare scan (count(*))':<34}{scan['rows']:>12,}{scan['seconds']:>10.1f}{scan['rows'] / scan['seconds']:>12,.0f}{scan['peak_rss_mb'] or 0:>13}")
    print(f"{'register + map (raw+mapped)':<34}{ingest['raw']:>12,}{ingest['seconds']:>10.1f}{ingest['raw'] / ingest['seconds']:>12,.0f}{ingest['peak_rss_mb'] or 0:>13}")
    print(f"ratio ingest/bare scan: {ingest['seconds'] / scan['seconds']:.2f}x   mapped {ingest['mapped']:,}, rejected {ingest['rejected']:,}")
    print("per operator:", {k: v for k, v in ingest.items() if k.startswith(("register_", "map_"))})

    if args.cli:
        fresh()
        env = {**os.environ, "VOICEFW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "voicefw"), "materialize", "--select", "raw_cdrs,mapped_cdrs,rejected_cdrs"],
            env=env, capture_output=True, text=True,
        )
        dt = time.perf_counter() - t0
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        print(f"voicefw materialize (Dagster runs): {dt:.1f}s, {ingest['raw'] / dt:,.0f} rows/s, {dt / scan['seconds']:.2f}x the bare scan")


if __name__ == "__main__":
    main()
