"""Ingest benchmark: voicefw's engine beside DuckDB's own typed load and a pandas peer, same files.

    .venv/bin/python benchmarks/ingest.py --calls 10000000 [--days 14] [--home /tmp/vf-bench] [--cli]

Phases, each in its own process so its peak RSS is its own, over one simulated landing zone:
- DuckDB bare scan: `count(*)` of every file with the operator's dialect (what reading costs).
- DuckDB typed load: `CREATE TABLE <op> AS SELECT * FROM read_csv([files])` per operator into a
  DuckDB file (sniffed types, union_by_name, bad lines skipped) — the yardstick (target: voicefw <= 2x).
- pandas peer: benchmarks/pandas_peer.py, vectorised, one file at a time, to Parquet (target: voicefw
  >= 8x faster).
- voicefw engine: register (read + line accounting + map every line into ingest_rows) for every
  operator, then `map_partitions` of all its days in one pass, then the SQL partition checks; with a
  per-phase breakdown.
With --cli also `voicefw materialize --select raw_cdrs,mapped_cdrs,rejected_cdrs` end to end
(Dagster runs included) on a fresh warehouse and Dagster home.
Files that DuckDB or pandas cannot read at all (the truncated gzip) are left out of their phases;
voicefw quarantines them.
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


def _files(home: Path):
    from resources.landing import LandingZone
    from voicefw_assets.operators import operator_configs

    os.environ["VOICEFW_HOME"] = str(home)
    zone = LandingZone(settle_s=0)
    files = {op: [f.path for f in zone.list_files(op, c.file_patterns) if f.size > 0] for op, c in operator_configs().items()}
    return {op: fs for op, fs in files.items() if fs}  # operators with drops in this landing zone


def _readable(con, op: str, files: list[Path], header: bool) -> list[Path]:
    """Files DuckDB's reader can load at all (probed before the timed load)."""
    ok = []
    for f in files:
        try:
            con.execute(f"SELECT count(*) FROM read_csv(?, header = {header}, ignore_errors = true)", [str(f)]).fetchall()
            ok.append(f)
        except Exception:  # noqa: BLE001 - the truncated gzip: a bare loader just fails on it
            continue
    return ok


def phase_scan(home: Path) -> dict:
    import duckdb

    from voicefw_assets.operators import operator_configs

    con = duckdb.connect()
    files = _files(home)
    readable = {op: _readable(con, op, fs, operator_configs()[op].csv.header) for op, fs in files.items()}
    rows, t0 = 0, time.perf_counter()
    for op, fs in readable.items():
        if not fs:
            continue
        header = operator_configs()[op].csv.header
        rows += con.execute(f"SELECT count(*) FROM read_csv(?, header = {header}, ignore_errors = true, union_by_name = true)",
                            [[str(f) for f in fs]]).fetchall()[0][0]
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def phase_typed_load(home: Path) -> dict:
    import duckdb

    from voicefw_assets.operators import operator_configs

    target = home / "typed_load.duckdb"
    target.unlink(missing_ok=True)
    probe = duckdb.connect()
    files = _files(home)
    readable = {op: _readable(probe, op, fs, operator_configs()[op].csv.header) for op, fs in files.items()}
    con = duckdb.connect(str(target))
    rows, t0 = 0, time.perf_counter()
    for op, fs in readable.items():
        if not fs:
            continue
        header = operator_configs()[op].csv.header
        con.execute(f"CREATE TABLE {op} AS SELECT * FROM read_csv(?, header = {header}, ignore_errors = true, union_by_name = true)",
                    [[str(f) for f in fs]])
        con.execute("CHECKPOINT")
        rows += con.execute(f"SELECT count(*) FROM {op}").fetchall()[0][0]
    out = {"rows": rows, "seconds": time.perf_counter() - t0}
    con.close()
    target.unlink(missing_ok=True)
    return out


def phase_pandas(home: Path) -> dict:
    from benchmarks.pandas_peer import map_file
    from voicefw_assets.operators import operator_configs

    out_dir = home / "pandas_out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    rows, t0 = 0, time.perf_counter()
    for op, fs in _files(home).items():
        for f in fs:
            rows += map_file(f, operator_configs()[op], out_dir)
    out = {"rows": rows, "seconds": time.perf_counter() - t0}
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


def phase_engine(home: Path) -> dict:
    from resources import LandingZone, Warehouse
    from voicefw_assets.ingest import landed_days, map_partitions, partition_checks, sync_landing
    from voicefw_assets.ingest.registry import TIMINGS
    from voicefw_assets.operators import operator_configs

    os.environ["VOICEFW_HOME"] = str(home)
    out = {"lines": 0, "mapped": 0, "rejected": 0, "partitions": 0, "quarantined": 0, "checks_failed": 0}
    phases = {"register": 0.0, "map partitions": 0.0, "checks (SQL)": 0.0}
    t0 = time.perf_counter()
    with Warehouse().connect() as con:
        for op, config in operator_configs().items():
            ts = time.perf_counter()
            report = sync_landing(con, config, LandingZone(settle_s=0))
            phases["register"] += time.perf_counter() - ts
            out["quarantined"] += len(report.quarantined)
            days = landed_days(con, op)
            ts = time.perf_counter()
            reports = map_partitions(con, config, days)
            phases["map partitions"] += time.perf_counter() - ts
            ts = time.perf_counter()
            checks = partition_checks(con, op, days)
            phases["checks (SQL)"] += time.perf_counter() - ts
            for d, rep in reports.items():
                out["lines"] += rep.lines
                out["mapped"] += rep.mapped
                out["rejected"] += rep.rejected
                out["partitions"] += 1
                out["checks_failed"] += sum(not c.passed for c in checks[d].values())
    out["seconds"] = time.perf_counter() - t0
    out["phases"] = {k: round(v, 2) for k, v in phases.items()}
    out["register_breakdown"] = {k: round(v, 2) for k, v in TIMINGS.items()}
    return out


def explain(home: Path, max_files: int = 8) -> None:
    """EXPLAIN ANALYZE of the staging SELECT over the first files of each operator: operator time
    per step of the generated SQL (the last columns each projection adds name the step)."""
    import json
    import tempfile

    import duckdb
    import numpy as np
    import pyarrow as pa

    from voicefw_assets.ingest.files import LineReader, string_views
    from voicefw_assets.ingest.numbers import ensure_e164_table
    from voicefw_assets.ingest.registry import partition_range
    from voicefw_assets.ingest.rows import Layout, parse_header, staging_select
    from voicefw_assets.operators import operator_configs

    for op, files in _files(home).items():
        config = operator_configs()[op]
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        ensure_e164_table(con)
        tables, layouts = [], []
        for i, f in enumerate(files[:max_files]):
            try:
                blocks = list(LineReader(f, home / "landing", config.csv.encoding).blocks())
                layouts.append(Layout(i, str(f), parse_header(config, blocks[0].text(0) if blocks else None)))
            except Exception:  # noqa: BLE001 - the files voicefw quarantines
                continue
            tables += [pa.table({"file_idx": pa.repeat(pa.scalar(i, pa.int32()), len(b)),
                                 "line_no": pa.array(np.arange(b.first_line, b.first_line + len(b))),
                                 "text": string_views(b)}) for b in blocks if len(b)]
        lines = pa.concat_tables(tables)
        con.register("lines", lines)
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{out}'")
        con.execute(f"CREATE TABLE x AS {staging_select(config, layouts, 'lines', None, partition_range())}")
        con.execute("PRAGMA disable_profiling")
        steps: list[tuple[float, str]] = []

        def walk(node: dict) -> None:
            info = node.get("extra_info") or {}
            cols = info.get("Projections") if isinstance(info, dict) else None
            label = node.get("name", "")
            if isinstance(cols, list) and cols:
                label += " -> " + ", ".join(str(c)[:32] for c in cols[-3:])
            steps.append((node.get("timing", 0.0), label))
            for child in node.get("children", []):
                walk(child)

        walk(json.loads(out.read_text())["operator"][0])
        total = sum(t for t, _ in steps)
        print(f"\n{op}: {lines.num_rows:,} lines, operator time {total:.2f} s ({total / lines.num_rows * 1e6:.1f} µs a line)")
        for t, label in sorted(steps, reverse=True)[:8]:
            print(f"  {t:6.3f} s  {100 * t / total:4.1f} %  {label}")
        out.unlink()


PHASES = {"scan": phase_scan, "typed_load": phase_typed_load, "pandas": phase_pandas, "engine": phase_engine}


def run_phase(name: str, home: Path) -> dict:
    """Run a phase in a fresh process; return its result and that process's peak RSS."""
    proc = subprocess.run([sys.executable, "-c", f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
                           f"from benchmarks.ingest import PHASES; from pathlib import Path; "
                           f"import resource; r = PHASES[{name!r}](Path({str(home)!r})); "
                           f"r['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); "
                           f"print('\\nRESULT ' + json.dumps(r, default=str))"],
                          capture_output=True, text=True, env={**os.environ, "VOICEFW_HOME": str(home), "VOICEFW_SETTLE_S": "0"})
    if proc.returncode:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.rsplit("RESULT ", 1)[1])  # after DuckDB's progress bar, if it drew one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--home", default="/tmp/voicefw-bench-ingest")
    ap.add_argument("--phases", default="scan,typed_load,pandas,engine", help="comma-separated subset")
    ap.add_argument("--cli", action="store_true", help="also time `voicefw materialize` with Dagster runs")
    ap.add_argument("--explain", action="store_true", help="only profile the generated SQL per step (EXPLAIN ANALYZE)")
    args = ap.parse_args()
    home = Path(args.home)

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
        for p in ("landing", "quarantine", "warehouse.duckdb", "warehouse.duckdb.wal", "dagster_home", ".duckdb_tmp"):
            target = home / p
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        shutil.copytree(backup, home / "landing")

    fresh()
    if args.explain:
        explain(home)
        return
    size_mb = sum(p.stat().st_size for p in (home / "landing").rglob("*") if p.is_file()) / 1e6
    results = {}
    for name in args.phases.split(","):
        fresh()
        results[name] = run_phase(name, home)
    print(f"\nlanding: {size_mb:,.0f} MB of CSV/CSV.gz; machine load {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<44}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    labels = {"scan": "DuckDB bare scan (count(*))", "typed_load": "DuckDB typed load (CREATE TABLE AS read_csv)",
              "pandas": "pandas peer (vectorised, per file)", "engine": "voicefw engine (register + map + checks)"}
    for name, r in results.items():
        rows = r.get("rows", r.get("lines", 0))
        print(f"{labels[name]:<44}{rows:>12,}{r['seconds']:>10.1f}{rows / r['seconds']:>12,.0f}{r['peak_rss_mb']:>13,}")
    if "engine" in results:
        e = results["engine"]
        print(f"voicefw: {e['partitions']} operator-day partitions, mapped {e['mapped']:,}, rejected {e['rejected']:,}, "
              f"files quarantined {e['quarantined']}, checks failed {e['checks_failed']}")
        print("  phases:", e["phases"])
        print("  register breakdown:", e["register_breakdown"])
        if "typed_load" in results:
            print(f"  voicefw / DuckDB typed load: {e['seconds'] / results['typed_load']['seconds']:.2f}x (target <= 2)")
        if "pandas" in results:
            print(f"  pandas / voicefw: {results['pandas']['seconds'] / e['seconds']:.2f}x (target >= 8)")

    if args.cli:
        fresh()
        env = {**os.environ, "VOICEFW_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "VOICEFW_SETTLE_S": "0"}
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", str(Path(sys.executable).parent / "voicefw"), "materialize",
                               "--select", "raw_cdrs,mapped_cdrs,rejected_cdrs"], env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        rss = next((line.split(":")[1].strip() for line in proc.stderr.splitlines() if "Maximum resident" in line), "?")
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        print(f"voicefw materialize (Dagster runs): {dt:.1f}s, peak RSS {int(rss) // 1024 if rss.isdigit() else rss} MB")


if __name__ == "__main__":
    main()
