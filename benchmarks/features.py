"""Benchmark: call_features (DuckDB SQL) on a synthetic mapped_cdrs of N calls, and LightGBM training.

    .venv/bin/python benchmarks/features.py --calls 10000000 [--train-rows 2000000]

The synthetic table is generated in DuckDB SQL (two UTC days, N/2 calls each; the features of
the second day read the first as history). call_features runs as the asset runs it
(batch_features.call_features_select: history in numpy, written back to DuckDB). Prints wall time, CPU time (both DuckDB threads) and peak RSS (this process + DuckDB); the machine
is shared, so compare CPU time and the load average when wall times differ.
Targets: 10 M calls <= 60 s, peak RSS <= 3 GB; training 2 M rows <= 60 s (all candidates, as
flash_call_model trains them).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicefw_assets.batch_features import HISTORY_DUCKDB_MEMORY, call_features_select  # noqa: E402
from voicefw_assets.features import FEATURE_NAMES  # noqa: E402

DAY = "2026-03-02"


def synth_sql(n: int) -> str:
    """n calls over 2026-03-01..02: normal traffic + flash A-ranges rotating the last 4 digits."""
    return f"""
CREATE OR REPLACE TABLE mapped_cdrs AS
WITH g AS (SELECT range AS i, hash(range) AS h FROM range({n})),
c AS (
  SELECT i, h, (h % 100) < 3 AS flash,
    TIMESTAMPTZ '2026-03-01 00:00:00+00' + to_microseconds(CAST((h >> 8) % 172800000000 AS BIGINT)) AS st
  FROM g
)
SELECT CASE WHEN i % 3 = 0 THEN 'operator_a' WHEN i % 3 = 1 THEN 'operator_b' ELSE 'operator_c' END AS operator,
  'c' || i AS call_id, CAST(st AS DATE) AS partition_date, st AS start_time,
  CASE WHEN NOT flash AND (h >> 20) % 10 < 6 THEN st + INTERVAL 5 SECOND END AS answer_time,
  st + to_microseconds(CAST(CASE WHEN flash THEN 1500000 ELSE 5000000 + (h >> 24) % 300000000 END AS BIGINT)) AS end_time,
  CASE WHEN flash THEN '+4420' || lpad(CAST((h >> 30) % 50 AS VARCHAR), 4, '0') || lpad(CAST((h >> 36) % 10000 AS VARCHAR), 4, '0')
       WHEN (h >> 40) % 50 = 0 THEN NULL
       ELSE '+447' || lpad(CAST((h >> 12) % 2000000 AS VARCHAR), 9, '0') END AS a_number,
  NULL AS a_number_raw,
  '+49' || lpad(CAST((h >> 44) % 3000000 AS VARCHAR), 10, '0') AS b_number, NULL AS b_number_raw,
  'trunk' || ((h >> 50) % 40) AS ingress_trunk, NULL AS egress_trunk,
  NOT flash AND (h >> 20) % 10 < 6 AS answered,
  CASE WHEN flash THEN 'cancelled' WHEN (h >> 20) % 10 < 6 THEN 'answered' ELSE 'no_answer' END AS disposition,
  NULL::INTEGER AS sip_code, NULL::INTEGER AS q850_cause,
  CASE WHEN flash THEN 'caller' ELSE 'callee' END AS release_side,
  CASE WHEN NOT flash AND (h >> 20) % 10 < 6 THEN 60.0 ELSE 0.0 END AS duration_s,
  CASE WHEN flash THEN 1.5 ELSE 5.0 END AS ring_s,
  'synthetic' AS source_file, i AS source_line
FROM c
"""


def train(con, rows: int) -> None:
    """Time what flash_call_model trains on `rows` rows: LightGBM (early-stopped on the validation
    fold), logistic regression and the velocity rules, through the same code (voicefw_assets.candidates)."""
    import numpy as np

    from voicefw_assets import candidates as C
    from voicefw_assets.assets.modeling import model_inputs
    from voicefw_assets.model_config import load_model_config

    mc = load_model_config()
    names = model_inputs(mc)
    cols = ", ".join(f'"{c}"' for c in names)
    n = con.execute("SELECT count(*) FROM call_features").fetchone()[0]
    reps = -(-rows // n)  # repeat the day's rows (shifted in time) when it has fewer than `rows`
    d = con.execute(f"""SELECT {cols} FROM (SELECT * FROM call_features, range({reps}) r(i)) USING SAMPLE {rows} ROWS
        ORDER BY start_time""").fetchnumpy()
    X = np.column_stack([d[c] for c in names]).astype(np.float64)
    rng = np.random.default_rng(0)
    y = ((X[:, names.index("a_range__distinct_a_10m")] > 3) ^ (rng.random(len(X)) < 0.01)).astype(int)
    split = C.Split(X, y, np.ones(len(y)))
    cut = C.validation_cut(len(y), mc.training.validation_share)
    fit, valid = split.rows(slice(0, cut)), split.rows(slice(cut, None))
    for name, run in (("lightgbm", lambda: C.train_lightgbm(fit, valid, names, mc.training)),
                      ("logistic_regression", lambda: C.train_linear(fit, names, mc.training)),
                      ("rules", lambda: C.fit_rules(fit, names, mc.rules_baseline))):
        t0 = time.perf_counter()
        out = run()
        print(f"training {name} on {len(X):,} rows x {len(names)} features: {time.perf_counter() - t0:.1f} s"
              + (f" ({out['rounds']} rounds)" if out.get("rounds") else "") + f"; peak RSS {rss_gb():.2f} GB", flush=True)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--train-rows", type=int, default=0, help="also time LightGBM training on this many rows")
    ap.add_argument("--memory-limit", default=HISTORY_DUCKDB_MEMORY, help="DuckDB's limit (default: what call_features sets)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
        con.execute("SET TimeZone='UTC'")
        con.execute(f"SET memory_limit='{args.memory_limit}'")
        con.execute(f"SET threads={args.threads}")
        con.execute(f"SET temp_directory='{tmp}/spill'")
        t0 = time.perf_counter()
        con.execute(synth_sql(args.calls))
        print(f"generated {args.calls:,} synthetic calls in {time.perf_counter() - t0:.1f} s")
        tz = {"operator_a": "Europe/London", "operator_b": "Europe/Berlin", "operator_c": "UTC"}
        t0, c0 = time.perf_counter(), time.process_time()
        con.execute(f"CREATE TABLE call_features AS {call_features_select(con, DAY, tz)}")
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_out = con.execute("SELECT count(*) FROM call_features").fetchone()[0]
        print(f"call_features: {args.calls:,} calls read (2 days), {n_out:,} feature rows, "
              f"{len(FEATURE_NAMES)} features in {dt:.1f} s (CPU {cpu:.1f} s, load {os.getloadavg()[0]:.1f}); "
              f"peak RSS {rss_gb():.2f} GB")
        if args.train_rows:
            train(con, args.train_rows)
        con.close()


if __name__ == "__main__":
    main()
