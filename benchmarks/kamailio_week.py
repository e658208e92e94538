"""Detection on real SIP proxy output beside a simulated week (issue #9, third check).

    # a simulated week that ends the day before today (the real calls carry the machine's clock)
    .venv/bin/voicefw simulate --home H --days 7 --start-date $(date -u -d '7 days ago' +%F) --seed 13
    # flash campaigns at real rates through a busy trunk of a real Kamailio, landed as db_text acc_cdrs
    .venv/bin/python benchmarks/kamailio_traffic.py --minutes 5 --home H --land dbtext
    VOICEFW_HOME=H DAGSTER_HOME=H/dagster_home VOICEFW_SETTLE_S=0 .venv/bin/voicefw materialize
    .venv/bin/python benchmarks/kamailio_week.py --home H

Judges the Kamailio operator's scored calls against the generator's ground truth: flash PR-AUC, the
best recall at precision >= 0.95, recall and precision of the served decision (flag or block), and
where the campaign ranges (the A-ranges of the true flash calls) rank in `suspicious_ranges`.
Target: every campaign range in the top ranks, flash recall >= 0.9 at precision >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def recall_at_precision(y: np.ndarray, s: np.ndarray, precision: float) -> float:
    """The largest recall of any score threshold whose precision is at least `precision` (as
    candidates.evaluate computes recall@P99)."""
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y, s)
    return float(r[p >= precision].max()) if (p >= precision).any() else 0.0


def judge(home: Path, operator: str) -> dict:
    from voicefw_assets.candidates import evaluate
    from voicefw_assets.ingest.sql import lit

    truth = f"read_csv({lit(str(home / 'ground_truth' / operator / '*.csv'))}, header=true, all_varchar=true)"
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows = con.execute(f"""SELECT s.score, s.decision <> 'allow' AS flagged, coalesce(t.truth = 'flash', false) AS y,
            s.a_range, s.partition_date FROM scored_calls s JOIN {truth} t USING (operator, call_id)
            WHERE s.operator = {lit(operator)}""").fetchnumpy()
    n_truth = con.execute(f"SELECT count(*) FROM {truth}").fetchone()[0]
    y, s, flagged = rows["y"].astype(int), rows["score"].astype(float), rows["flagged"].astype(bool)
    m = evaluate(y, s)
    campaign = sorted({r for r, t in zip(rows["a_range"], y) if t and r is not None})
    days = sorted({str(d) for d in rows["partition_date"]})
    ranked = con.execute(f"""SELECT a_range, row_number() OVER (ORDER BY flagged_calls DESC, flagged_share DESC, a_range) AS rank,
            flagged_calls, calls FROM suspicious_ranges WHERE partition_date IN (SELECT unnest({lit(days)}::DATE[]))
            AND list_contains(string_split(operators, ','), {lit(operator)})""").fetchall()
    rank = {r: (k, f, c) for r, k, f, c in ranked}
    con.close()
    tp = int((flagged & (y == 1)).sum())
    return {
        "operator": operator, "days": days, "calls_scored": int(len(y)), "calls_in_truth": int(n_truth),
        "flash_calls": int(y.sum()), "pr_auc": round(m["pr_auc"], 4), "roc_auc": round(m.get("roc_auc", float("nan")), 4),
        "recall_at_p95": round(recall_at_precision(y, s, 0.95), 4), "recall_at_p99": round(m["recall_at_p99"], 4),
        "served_decision": {"recall": round(tp / max(int(y.sum()), 1), 4), "precision": round(tp / max(int(flagged.sum()), 1), 4)},
        "campaign_ranges": {r: {"rank": rank[r][0], "flagged": rank[r][1], "calls": rank[r][2]} if r in rank else None for r in campaign},
        "campaign_ranges_in_top": sum(1 for r in campaign if r in rank and rank[r][0] <= len(campaign)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, type=Path, help="the VOICEFW_HOME that was materialized")
    p.add_argument("--operator", default="kamailio_dbtext")
    args = p.parse_args()
    out = judge(args.home, args.operator)
    print(json.dumps(out, indent=1))
    ok = out["recall_at_p95"] >= 0.9 and out["campaign_ranges_in_top"] == len(out["campaign_ranges"])
    print("verdict:", "ok" if ok else "target missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
