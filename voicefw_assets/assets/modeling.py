"""Features, labels, training, gated promotion and batch scoring (Dagster assets + checks).

call_features[day], call_labels[day]  ->  training_set  ->  flash_call_model (candidate)
  -- blocking checks: quality_gate, leakage_guard -->  serving_model (versioned bundle)
  -->  scored_calls[day], suspicious_ranges[day]

Heavy work is DuckDB SQL in the warehouse; pandas/numpy only for the training sample and scores.
"""


import base64
import io
import json
import tempfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    Output,
    asset,
    asset_check,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from resources.model_store import ModelStore
from resources.warehouse import WAREHOUSE_POOL, Warehouse
from voicefw_assets import features as F
from voicefw_assets.labels import call_labels_sql, label_quality_sql
from voicefw_assets.model_bundle import Bundle, decision, feature_row, load_bundle, score_matrix
from voicefw_assets.model_config import load_model_config
from voicefw_assets.online_features import STATE_COLUMNS, STATE_FILE, STATE_META
from voicefw_assets.operators import operator_configs
from voicefw_assets.partitions import daily_partitions
from voicefw_assets.settings import paths

GROUP = "modeling"
MAPPED_BY_DAY = AssetDep("mapped_cdrs", partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name="date"))


def _timezones() -> dict[str, str]:
    return {name: cfg.timezone for name, cfg in operator_configs().items()}


def _replace_partition(con, table: str, day: str, select_sql: str, log=None) -> int:
    """Idempotent day write: create if needed, delete the day, insert, in one transaction.

    When the SQL's columns differ from the table's (a feature or label rule changed), the other
    days are stale: the table is recreated and the log says to re-materialize every day."""
    old = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [table]).fetchall()]
    new = [d[0] for d in con.execute(f"SELECT * FROM ({select_sql}) LIMIT 0").description]
    if old and old != new:
        if log:
            log.warning(f"{table} columns changed ({len(old)} -> {len(new)}): table recreated; re-materialize {table} for every day")
        con.execute(f"DROP TABLE {table}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM ({select_sql}) LIMIT 0")
    con.execute("BEGIN")
    try:
        con.execute(f"DELETE FROM {table} WHERE partition_date = DATE '{day}'")
        con.execute(f"INSERT INTO {table} {select_sql}")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return con.execute(f"SELECT count(*) FROM {table} WHERE partition_date = DATE '{day}'").fetchall()[0][0]


def _md(df: pd.DataFrame, n: int = 20) -> str:
    df = df.head(n)
    if df.empty:
        return "_(no rows)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- features and labels

@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[MAPPED_BY_DAY], pool=WAREHOUSE_POOL,
       description="Setup-time features + strictly-earlier history (24 h, across days and operators) per call of a UTC day.")
def call_features(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    day = context.partition_key
    with warehouse.connect() as con:
        n = _replace_partition(con, "call_features", day, F.call_features_sql(day, _timezones()), context.log)
        stats = con.execute(f"""SELECT count(DISTINCT a_range), max("a_range__count_1m"), avg("a_range__count_1m")
            FROM call_features WHERE partition_date = DATE '{day}'""").fetchone()
        preview = con.execute(f"""SELECT operator, call_id, start_time, a_range, "a_range__count_1m", "a_range__distinct_a_10m",
            "a_range__su_share_1h" FROM call_features WHERE partition_date = DATE '{day}'
            ORDER BY "a_range__count_1m" DESC LIMIT 10""").df()
    return MaterializeResult(metadata={
        "rows": n, "features": len(F.FEATURE_NAMES), "distinct_a_ranges": stats[0] or 0,
        "max_a_range_calls_1m": float(stats[1] or 0),
        "feature_names": MetadataValue.json(list(F.FEATURE_NAMES)),
        "busiest_a_ranges": MetadataValue.md(_md(preview)),
    })


def _truth_files(days) -> list[Path]:
    """Simulator ground-truth CSVs of these UTC days (none for real operator data)."""
    return sorted(p for d in days for p in paths().ground_truth.glob(f"*/{d}.csv"))


def _read_truth_sql(files: list[Path]) -> str:
    return f"read_csv([{', '.join(repr(str(p)) for p in files)}], header=true, all_varchar=true)"


@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[MAPPED_BY_DAY], pool=WAREHOUSE_POOL,
       description="Weak outcome labels (flash, wangiri, callback, normal) from each call's outcome and its A-range's "
                   "behaviour that day; rules in voicefw_assets/labels.py. Precision/recall vs simulator truth when present.")
def call_labels(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    day = context.partition_key
    cfg = load_model_config().labels
    truth_files = _truth_files([day])
    meta: dict = {}
    with warehouse.connect() as con:
        sql = call_labels_sql(day, cfg)
        n = _replace_partition(con, "call_labels", day, sql, context.log)
        counts = con.execute(f"""SELECT label, evidence, count(*) AS calls, count(*) FILTER (WHERE flash_like) AS flash_like
            FROM call_labels WHERE partition_date = DATE '{day}' GROUP BY ALL ORDER BY 1, 2""").df()
        meta["label_counts"] = MetadataValue.md(_md(counts, 50))
        if truth_files:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _truth AS SELECT operator, call_id, truth FROM {_read_truth_sql(truth_files)}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE _lab AS SELECT * FROM call_labels WHERE partition_date = DATE '{day}'")
            q = con.execute(label_quality_sql("_lab", "_truth")).df()
            tot = con.execute("""SELECT count(*) FILTER (WHERE label='flash' AND truth='flash'),
                count(*) FILTER (WHERE label='flash'), count(*) FILTER (WHERE truth='flash')
                FROM _lab JOIN _truth USING (operator, call_id)""").fetchone()
            meta["label_quality_vs_ground_truth"] = MetadataValue.md(
                "Weak labels (CDR outcomes + campaign behaviour of the day) vs simulator truth, per operator and class. "
                "Missed flash calls are mostly SIM-farm calls from random-looking numbers outside bursts.\n\n" + _md(q, 50))
            meta["flash_label_precision"] = float(tot[0] / tot[1]) if tot[1] else 0.0
            meta["flash_label_recall"] = float(tot[0] / tot[2]) if tot[2] else 0.0
        else:
            meta["label_quality_vs_ground_truth"] = MetadataValue.md("_no ground truth for this day_")
    return MaterializeResult(metadata={"rows": n, **meta})


# ---------------------------------------------------------------- training set and candidate

def split_days(days: list, cfg) -> tuple[list, list]:
    """Time split of the (sorted) window days: the latest `eval_days` evaluate, but at least
    `min_train_days` train (3 days -> 2 + 1; 7 days -> 5 + 2). Never random: a random split
    would put calls of the same campaign-hour on both sides and flatter the model."""
    n_eval = min(cfg.eval_days, len(days) - cfg.min_train_days)
    if n_eval < 1:
        raise ValueError(f"need at least min_train_days + 1 = {cfg.min_train_days + 1} days of features+labels, have {len(days)}")
    return days[:-n_eval], days[-n_eval:]


@asset(group_name=GROUP, deps=[call_features, call_labels], pool=WAREHOUSE_POOL,
       description="Feature rows + labels over the latest `window_days` days; the latest `eval_days` (keeping "
                   "`min_train_days` for training) are the evaluation split: a time split, never random.")
def training_set(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    cfg = load_model_config().training
    cols = ", ".join(f'f."{c}"' for c in F.FEATURE_NAMES)
    with warehouse.connect() as con:
        days = [r[0] for r in con.execute(f"""SELECT DISTINCT f.partition_date FROM call_features f
            JOIN (SELECT DISTINCT partition_date FROM call_labels) USING (partition_date)
            ORDER BY 1 DESC LIMIT {cfg.window_days}""").fetchall()][::-1]
        eval_from = split_days(days, cfg)[1][0]
        con.execute(f"""CREATE OR REPLACE TABLE training_set AS
            SELECT f.operator, f.call_id, f.partition_date, f.start_time, f.a_range, {cols},
              l.label, CAST(l.label = 'flash' AS INTEGER) AS is_flash,
              CASE WHEN f.partition_date >= DATE '{eval_from}' THEN 'eval' ELSE 'train' END AS split
            FROM call_features f JOIN call_labels l USING (operator, call_id, partition_date)
            WHERE f.partition_date BETWEEN DATE '{days[0]}' AND DATE '{days[-1]}'""")
        summary = con.execute("SELECT split, label, count(*) AS rows FROM training_set GROUP BY ALL ORDER BY 1, 2").df()
    train_days = [d.isoformat() for d in days if d < eval_from]
    eval_days = [d.isoformat() for d in days if d >= eval_from]
    return MaterializeResult(metadata={
        "rows": int(summary["rows"].sum()), "train_days": MetadataValue.json(train_days),
        "eval_days": MetadataValue.json(eval_days), "by_split_and_label": MetadataValue.md(_md(summary, 50)),
    })


def rules_score(X: np.ndarray, names: list[str], calls_per_min: float, su_share: float) -> np.ndarray:
    """Today's voice-firewall rule (OpenSIPS fraud_detection / CGRateS style): fire when an A-range
    makes >= `calls_per_min` calls a minute AND its short-unanswered share is >= `su_share`.
    Fired calls score >= 2/3; the rest are ranked by how close they come (for PR curves)."""
    cpm = X[:, names.index("a_range__count_1m")] + 1  # this call included
    share = np.maximum(X[:, names.index("a_range__su_share_1h")], 0)
    fired = (cpm >= calls_per_min) & (share >= su_share)
    return (fired + 0.5 * np.minimum(cpm / calls_per_min, 1) * share) / 1.5


def evaluate(y: np.ndarray, s: np.ndarray) -> dict:
    """PR-AUC, ROC-AUC, recall at precision >= 0.99, precision at FPR <= 0.1%."""
    if y.min() == y.max():
        raise ValueError("evaluation split has a single class")
    p, r, _ = precision_recall_curve(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    ok = fpr <= 0.001
    pos, neg = y.sum(), len(y) - y.sum()
    i = np.flatnonzero(ok)[-1]
    tp, fp = tpr[i] * pos, fpr[i] * neg
    return {
        "pr_auc": float(average_precision_score(y, s)),
        "roc_auc": float(roc_auc_score(y, s)),
        "recall_at_p99": float(r[p >= 0.99].max()) if (p >= 0.99).any() else 0.0,
        "precision_at_fpr_0_1pct": float(tp / (tp + fp)) if tp + fp > 0 else 0.0,
    }


def _pr_plot(targets: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> str:
    """PR curves of every model, one panel per target (weak labels; ground truth where it exists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), dpi=80, squeeze=False)
    for ax, (target, (y, mask)) in zip(axes[0], targets.items()):
        for name, s in scores.items():
            p, r, _ = precision_recall_curve(y, s[mask])
            ax.plot(r, p, label=f"{name} (AP {average_precision_score(y, s[mask]):.3f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"flash calls, evaluation days, vs {target}")
        ax.legend(loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![PR curves](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


@asset(group_name=GROUP, deps=[training_set], pool=WAREHOUSE_POOL,
       description="Candidate LightGBM flash-call model beside a logistic regression and a rules baseline (same time split), "
                   "evaluated against the weak labels and, where simulator ground truth exists, against it.")
def flash_call_model(context: AssetExecutionContext, warehouse: Warehouse) -> Output[dict]:
    mc = load_model_config()
    cfg = mc.training
    names = list(F.FEATURE_NAMES)
    cols = ", ".join(f'"{c}"' for c in names)
    with warehouse.connect() as con:
        days = dict(con.execute("SELECT split, list(DISTINCT partition_date::VARCHAR ORDER BY partition_date::VARCHAR) FROM training_set GROUP BY 1").fetchall())
        n_train = con.execute("SELECT count(*) FROM training_set WHERE split = 'train'").fetchone()[0]
        keep = min(1.0, cfg.max_train_rows / max(n_train, 1))
        # above max_train_rows, keep every flash call and sample the rest (weights undo the sampling)
        tr = con.execute(f"""SELECT {cols}, is_flash, CASE WHEN is_flash = 1 THEN 1.0 ELSE 1.0 / {keep} END AS w
            FROM training_set WHERE split = 'train' AND (is_flash = 1 OR hash(call_id) % 1000000 < {keep * 1e6})
            ORDER BY start_time, operator, call_id""").fetchnumpy()
        truth_files = _truth_files(days.get("eval", []))
        truth = (f"LEFT JOIN (SELECT operator, call_id, truth FROM {_read_truth_sql(truth_files)}) t USING (operator, call_id)"
                 if truth_files else "LEFT JOIN (SELECT NULL::VARCHAR AS operator, NULL::VARCHAR AS call_id, NULL::VARCHAR AS truth) t USING (operator, call_id)")
        ev = con.execute(f"""SELECT {cols}, is_flash, t.truth IS NOT NULL AS has_truth, coalesce(t.truth = 'flash', false) AS truth_flash
            FROM training_set {truth}
            WHERE split = 'eval' ORDER BY start_time, operator, call_id""").fetchnumpy()
    Xtr = np.column_stack([tr[c] for c in names]).astype(np.float64)
    ytr, wtr = tr["is_flash"].astype(int), tr["w"].astype(float)
    Xev = np.column_stack([ev[c] for c in names]).astype(np.float64)
    yev = ev["is_flash"].astype(int)
    if ytr.min() == ytr.max():
        raise ValueError("training split has a single class")

    params = {"objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
              "min_data_in_leaf": 20, "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
              "seed": 7, "deterministic": True, "num_threads": 2, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(Xtr, ytr, weight=wtr, feature_name=names), num_boost_round=cfg.num_boost_round)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    lr.fit(Xtr, ytr, logisticregression__sample_weight=wtr)
    rb = mc.rules_baseline
    scores = {
        "lightgbm": booster.predict(Xev, num_threads=1),
        "logistic_regression": lr.predict_proba(Xev)[:, 1],
        "rules": rules_score(Xev, names, rb.calls_per_min_per_a_range, rb.short_unanswered_share),
    }
    metrics = {k: evaluate(yev, s) for k, s in scores.items()}
    targets = {"labels": (yev, np.ones(len(yev), bool))}
    meta: dict = {}
    has_truth = ev["has_truth"].astype(bool)
    if has_truth.any():
        # simulator ground truth: the honest number, and how far the weak labels are from it on these days
        yt = ev["truth_flash"][has_truth].astype(int)
        targets["ground truth"] = (yt, has_truth)
        metrics_truth = {k: evaluate(yt, s[has_truth]) for k, s in scores.items()}
        lab = yev[has_truth]
        meta.update({
            "truth_rows": int(has_truth.sum()), "truth_positives": int(yt.sum()),
            "label_vs_truth/flash_precision": float((lab & yt).sum() / max(lab.sum(), 1)),
            "label_vs_truth/flash_recall": float((lab & yt).sum() / max(yt.sum(), 1)),
            "metrics_vs_ground_truth": MetadataValue.md(_md(pd.DataFrame([{"model": k, **v} for k, v in metrics_truth.items()]))),
        })
        for model, m in metrics_truth.items():
            for k, v in m.items():
                meta[f"truth/{model}/{k}"] = v
    else:
        metrics_truth = None
    importance = pd.DataFrame({"feature": names, "gain": booster.feature_importance("gain")}).sort_values("gain", ascending=False)
    # golden rows: a few evaluation rows (flash and not) whose scores a loaded bundle must reproduce
    idx = list(np.flatnonzero(yev == 1)[:3]) + list(np.flatnonzero(yev == 0)[:3])
    golden = [{"features": dict(zip(names, map(float, Xev[i]))), "score": float(scores["lightgbm"][i])} for i in idx]
    table = pd.DataFrame([{"model": k, **v} for k, v in metrics.items()])
    value = {
        "model_text": booster.model_to_string(), "feature_names": names, "metrics": metrics,
        "metrics_vs_ground_truth": metrics_truth,
        "golden_rows": golden, "trained_on": days.get("train", []), "evaluated_on": days.get("eval", []),
        "train_rows": int(len(ytr)), "eval_rows": int(len(yev)),
    }
    meta.update({
        "train_rows": len(ytr), "eval_rows": len(yev), "train_positives": int(ytr.sum()), "eval_positives": int(yev.sum()),
        "train_partitions": MetadataValue.json(days.get("train", [])), "eval_partitions": MetadataValue.json(days.get("eval", [])),
        "metrics": MetadataValue.md("Against the weak labels (what quality_gate checks):\n\n" + _md(table)),
        "pr_curve": MetadataValue.md(_pr_plot(targets, scores)),
        "feature_importance": MetadataValue.md(_md(importance, 15)),
    })
    for model, m in metrics.items():
        for k, v in m.items():
            meta[f"{model}/{k}"] = v
    return Output(value, metadata=meta)


# ---------------------------------------------------------------- blocking checks (gates)

def gate_failures(metrics: dict, g) -> list[str]:
    """Why a candidate must not be promoted (empty: promote). `metrics` are against the weak labels."""
    cand = metrics["lightgbm"]
    failures = []
    if cand["pr_auc"] < g.min_pr_auc:
        failures.append(f"PR-AUC {cand['pr_auc']:.4f} < floor {g.min_pr_auc}")
    if cand["precision_at_fpr_0_1pct"] < g.min_precision_at_fpr_0_1pct:
        failures.append(f"precision@FPR0.1% {cand['precision_at_fpr_0_1pct']:.4f} < floor {g.min_precision_at_fpr_0_1pct}")
    if cand["recall_at_p99"] < g.min_recall_at_p99:
        failures.append(f"recall@P99 {cand['recall_at_p99']:.4f} < floor {g.min_recall_at_p99}")
    for base in ("logistic_regression", "rules"):
        if cand["pr_auc"] <= metrics[base]["pr_auc"] + g.min_margin_pr_auc:
            failures.append(f"PR-AUC {cand['pr_auc']:.4f} does not beat {base} ({metrics[base]['pr_auc']:.4f}) by > {g.min_margin_pr_auc}")
    if cand["recall_at_p99"] < metrics["rules"]["recall_at_p99"] + g.min_margin_recall_at_p99:
        failures.append(f"recall@P99 {cand['recall_at_p99']:.4f} is not >= rules ({metrics['rules']['recall_at_p99']:.4f}) "
                        f"+ {g.min_margin_recall_at_p99}")
    return failures


@asset_check(asset=flash_call_model, blocking=True, description="Candidate beats both baselines and clears the absolute floors.")
def quality_gate(flash_call_model: dict) -> AssetCheckResult:
    # The gate judges the candidate against the weak LABELS, not simulator ground truth: production
    # data has no ground truth, so a gate on truth would mean something different in simulation and
    # in production (and would pass or fail a run by whether a simulator wrote truth files). The
    # labels' own error vs truth is measured on call_labels and flash_call_model, and the candidate's
    # metrics vs truth are reported next to the gate's, so a label/truth gap cannot hide.
    g = load_model_config().gates
    m = flash_call_model["metrics"]
    failures = gate_failures(m, g)
    meta = {"failures": MetadataValue.json(failures), "judged_against": "weak labels",
            "candidate_pr_auc": m["lightgbm"]["pr_auc"], "candidate_recall_at_p99": m["lightgbm"]["recall_at_p99"],
            "candidate_precision_at_fpr_0_1pct": m["lightgbm"]["precision_at_fpr_0_1pct"],
            "rules_pr_auc": m["rules"]["pr_auc"], "rules_recall_at_p99": m["rules"]["recall_at_p99"],
            "logistic_regression_pr_auc": m["logistic_regression"]["pr_auc"]}
    truth = flash_call_model.get("metrics_vs_ground_truth")
    if truth:
        meta["candidate_pr_auc_vs_ground_truth"] = truth["lightgbm"]["pr_auc"]
        meta["candidate_recall_at_p99_vs_ground_truth"] = truth["lightgbm"]["recall_at_p99"]
    return AssetCheckResult(passed=not failures, metadata=meta)


OUTCOME_TOKENS = ("answer", "end_time", "duration", "ring", "release", "disposition", "sip", "q850", "egress", "label", "flash", "truth")


def leakage_problems(feature_names: list[str]) -> list[str]:
    """Inputs that are outcome fields, derived from the call's own outcome, or unknown to features.py.
    Names are checked against the outcome vocabulary, and the SQL is probed: changing one call's own
    outcome fields must leave its features (and those of calls that started before it ended) unchanged."""
    problems = [f"{n}: not a declared feature" for n in feature_names if n not in F.FEATURE_NAMES]
    problems += [f"{n}: names an outcome field" for n in feature_names if any(t in n.lower() for t in OUTCOME_TOKENS)]
    problems += F.outcome_probe()
    return problems


@asset_check(asset=flash_call_model, blocking=True, description="No outcome field, or anything derived from the call's own outcome, is an input.")
def leakage_guard(flash_call_model: dict) -> AssetCheckResult:
    problems = leakage_problems(flash_call_model["feature_names"])
    return AssetCheckResult(passed=not problems, metadata={"problems": MetadataValue.json(problems),
                                                           "inputs": len(flash_call_model["feature_names"])})


# ---------------------------------------------------------------- promotion and scoring

@asset(group_name=GROUP, pool=WAREHOUSE_POOL,
       description="The promoted bundle ($VOICEFW_HOME/models/<version>/); materializes only when the blocking gates pass.")
def serving_model(context: AssetExecutionContext, flash_call_model: dict, warehouse: Warehouse, model_store: ModelStore) -> MaterializeResult:
    mc = load_model_config()
    thresholds = {"flag": mc.decision.flag, "block": mc.decision.block}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with warehouse.connect() as con:
            last_day = con.execute("SELECT max(partition_date) FROM call_features").fetchone()[0]
            cut = f"TIMESTAMPTZ '{last_day.isoformat()} 00:00:00+00' + INTERVAL 1 DAY"
            con.execute(f"""COPY (
                SELECT operator, call_id, epoch_us(start_time) AS start_us, epoch_us(end_time) AS end_us, a_number,
                  b_number, ingress_trunk, coalesce(answered, false) AS answered, ring_s
                FROM mapped_cdrs WHERE start_time >= {cut} - INTERVAL {F.MAX_WINDOW_S} SECOND AND start_time < {cut}
                ORDER BY start_us, operator, call_id) TO '{state / STATE_FILE}' (HEADER, DELIMITER ',')""")
            n_state = con.execute(f"SELECT count(*) FROM read_csv('{state / STATE_FILE}')").fetchone()[0]
        assert list(STATE_COLUMNS) == (state / STATE_FILE).read_text().split("\n", 1)[0].split(",")
        (state / STATE_META).write_text(json.dumps({"timezones": _timezones(), "history_until": str(last_day)}, sort_keys=True))
        version, path = model_store.write(
            model_text=flash_call_model["model_text"], feature_names=flash_call_model["feature_names"],
            thresholds=thresholds, metrics=flash_call_model["metrics"], golden_rows=flash_call_model["golden_rows"],
            trained_on=flash_call_model["trained_on"], state_files={STATE_FILE: state / STATE_FILE, STATE_META: state / STATE_META})
    load_bundle(path)  # verify + golden rows before announcing it
    return MaterializeResult(metadata={
        "bundle_path": str(path), "version": version, "thresholds": MetadataValue.json(thresholds),
        "state_calls": int(n_state), "history_until": str(last_day),
        "pr_auc": flash_call_model["metrics"]["lightgbm"]["pr_auc"],
        "trained_on": MetadataValue.json(flash_call_model["trained_on"]),
    })


def promoted_bundle(context: AssetExecutionContext) -> Bundle:
    """The bundle of the latest serving_model materialization (the same lookup the service does)."""
    event = context.instance.get_latest_materialization_event(AssetKey("serving_model"))
    if event is None or event.asset_materialization is None:
        raise ValueError("serving_model has never been materialized")
    return load_bundle(Path(event.asset_materialization.metadata["bundle_path"].value))


@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[call_features, serving_model], pool=WAREHOUSE_POOL,
       description="Every call of the day scored by the promoted model, with its allow/flag/block decision.")
def scored_calls(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    day = context.partition_key
    bundle = promoted_bundle(context)
    cols = ", ".join(f'"{c}"' for c in bundle.feature_names)
    with warehouse.connect() as con:
        d = con.sql(f"SELECT operator, call_id, {cols} FROM call_features WHERE partition_date = DATE '{day}'").fetchnumpy()
        X = np.column_stack([d[c] for c in bundle.feature_names]).astype(np.float64) if len(d["call_id"]) else np.empty((0, len(bundle.feature_names)))
        s = score_matrix(bundle, X) if len(X) else np.empty(0)
        scores = pd.DataFrame({"operator": d["operator"], "call_id": d["call_id"], "score": s})
        con.register("_scores", scores)
        th = bundle.thresholds
        select = f"""SELECT f.operator, f.call_id, f.partition_date, f.start_time, f.a_number, f.a_range, f.b_number, f.ingress_trunk,
              s.score, CASE WHEN s.score >= {th['block']} THEN 'block' WHEN s.score >= {th['flag']} THEN 'flag' ELSE 'allow' END AS decision,
              '{bundle.version}' AS model_version
            FROM call_features f JOIN _scores s USING (operator, call_id) WHERE f.partition_date = DATE '{day}'"""
        n = _replace_partition(con, "scored_calls", day, select, context.log)
        con.unregister("_scores")
        dec = con.execute(f"SELECT decision, count(*) AS calls FROM scored_calls WHERE partition_date = DATE '{day}' GROUP BY 1 ORDER BY 1").df()
    return MaterializeResult(metadata={"rows": n, "model_version": bundle.version, "decisions": MetadataValue.md(_md(dec))})


@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[scored_calls], pool=WAREHOUSE_POOL,
       description="Per A-range report for the fraud team: calls, distinct B-numbers, flagged share, where seen; ranked.")
def suspicious_ranges(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    day = context.partition_key
    select = f"""SELECT partition_date, a_range, count(*) AS calls, count(DISTINCT b_number) AS distinct_b_numbers,
          count(DISTINCT a_number) AS distinct_a_numbers,
          count(*) FILTER (WHERE decision <> 'allow') AS flagged_calls,
          round(count(*) FILTER (WHERE decision <> 'allow') / count(*), 4) AS flagged_share,
          round(max(score), 4) AS max_score, min(start_time) AS first_seen, max(start_time) AS last_seen,
          string_agg(DISTINCT operator, ',' ORDER BY operator) AS operators,
          string_agg(DISTINCT ingress_trunk, ',' ORDER BY ingress_trunk) AS trunks,
          any_value(model_version) AS model_version
        FROM scored_calls WHERE partition_date = DATE '{day}' AND a_range IS NOT NULL
        GROUP BY partition_date, a_range
        HAVING count(*) FILTER (WHERE decision <> 'allow') > 0"""
    with warehouse.connect() as con:
        n = _replace_partition(con, "suspicious_ranges", day, select, context.log)
        top = con.execute(f"""SELECT row_number() OVER (ORDER BY flagged_calls DESC, flagged_share DESC, a_range) AS rank,
            a_range, calls, distinct_b_numbers, distinct_a_numbers, flagged_calls, flagged_share, max_score,
            strftime(first_seen, '%H:%M:%S') AS first_seen, strftime(last_seen, '%H:%M:%S') AS last_seen, operators, trunks
            FROM suspicious_ranges WHERE partition_date = DATE '{day}' ORDER BY rank LIMIT 25""").df()
    return MaterializeResult(metadata={"ranges": n, "report": MetadataValue.md(_md(top, 25))})


assets = [call_features, call_labels, training_set, flash_call_model, serving_model, scored_calls, suspicious_ranges]
asset_checks = [quality_gate, leakage_guard]
