"""Features, labels, training, gated promotion and batch scoring (Dagster assets + checks).

call_features[day], call_labels[day]  ->  training_set  ->  flash_call_model (candidates)
  -- checks: quality_gate (warns: candidate rejected), leakage_guard (blocks) -->
  serving_model (versioned bundle: the chosen candidate, or the velocity rules)
  -->  scored_calls[day], suspicious_ranges[day]

Heavy work is DuckDB SQL in the warehouse; pandas/numpy only for the training sample and scores.
"""


import json
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    Failure,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
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

from resources.model_store import ModelStore
from resources.warehouse import WAREHOUSE_POOL, Warehouse
from voicefw_assets import candidates as C
from voicefw_assets import charts
from voicefw_assets.batch_features import HISTORY_DUCKDB_MEMORY, call_features_select
from voicefw_assets.bundle_verify import verify_in_child
from voicefw_assets.ingest.sql import lit
from voicefw_assets import features as F
from voicefw_assets.labels import call_labels_sql, label_quality_sql
from voicefw_assets.model_bundle import Bundle, load_bundle, score_matrix
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


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _md(df: pd.DataFrame, n: int = 20) -> str:
    df = df.head(n)
    if df.empty:
        return "_(no rows)_"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- features and labels

@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[MAPPED_BY_DAY], pool=WAREHOUSE_POOL,
       description="Setup-time features + strictly-earlier history (24 h, across days and operators) per call of a UTC day.")
def call_features(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    day = context.partition_key
    with warehouse.connect() as con:
        con.execute(f"SET memory_limit = '{HISTORY_DUCKDB_MEMORY}'")  # the history columns live in numpy beside it
        n = _replace_partition(con, "call_features", day, call_features_select(con, day, _timezones()), context.log)
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
    return f"read_csv([{', '.join(lit(str(p)) for p in files)}], header=true, all_varchar=true)"


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
            meta["flash_label_precision"] = round(float(tot[0] / tot[1]), 4) if tot[1] else 0.0
            meta["flash_label_recall"] = round(float(tot[0] / tot[2]), 4) if tot[2] else 0.0
        else:
            meta["label_quality_vs_ground_truth"] = MetadataValue.md("_no ground truth for this day_")
    return MaterializeResult(metadata={"rows": n, **meta})


# ---------------------------------------------------------------- training set and candidates

def split_days(days: list, cfg) -> tuple[list, list]:
    """Time split of the (sorted) window days: the latest `eval_days` evaluate, but at least
    `min_train_days` train (3 days -> 2 + 1; 7 days -> 5 + 2); with fewer days everything trains
    and nothing evaluates (no ML candidate can pass then). Never random: a random split would put
    calls of the same campaign-hour on both sides and flatter the model."""
    n_eval = max(0, min(cfg.eval_days, len(days) - cfg.min_train_days))
    return (days[:-n_eval], days[-n_eval:]) if n_eval else (list(days), [])


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
        if not days:
            raise ValueError("no day has both call_features and call_labels yet")
        train_days, eval_days = split_days(days, cfg)
        eval_from = eval_days[0] if eval_days else days[-1] + timedelta(days=1)
        con.execute(f"""CREATE OR REPLACE TABLE training_set AS
            SELECT f.operator, f.call_id, f.partition_date, f.start_time, f.a_range, {cols},
              l.label, CAST(l.label = 'flash' AS INTEGER) AS is_flash,
              CASE WHEN f.partition_date >= DATE '{eval_from}' THEN 'eval' ELSE 'train' END AS split
            FROM call_features f JOIN call_labels l USING (operator, call_id, partition_date)
            WHERE f.partition_date BETWEEN DATE '{days[0]}' AND DATE '{days[-1]}'""")
        summary = con.execute("SELECT split, label, count(*) AS rows FROM training_set GROUP BY ALL ORDER BY 1, 2").df()
    if not eval_days:
        context.log.warning(f"{len(days)} day(s) of data: nothing to evaluate on until there are "
                            f"{cfg.min_train_days + 1}; only the shipped velocity rules can be served")
    return MaterializeResult(metadata={
        "rows": int(summary["rows"].sum()), "train_days": MetadataValue.json([d.isoformat() for d in train_days]),
        "eval_days": MetadataValue.json([d.isoformat() for d in eval_days]), "by_split_and_label": MetadataValue.md(_md(summary, 50)),
    })


def model_inputs(mc) -> list[str]:
    """What every candidate reads: the model features plus whatever the velocity rules read."""
    wanted = set(F.MODEL_FEATURES) | set(C.rule_features(mc.rules_baseline))
    return [n for n in F.FEATURE_NAMES if n in wanted]


def _load_training(con, names: list[str], cfg) -> tuple[dict, dict, dict, dict]:
    """(days per split, training rows, evaluation rows with truth, training days per operator)."""
    cols = ", ".join(f'"{c}"' for c in names)
    days = dict(con.execute("SELECT split, list(DISTINCT partition_date::VARCHAR ORDER BY partition_date::VARCHAR) "
                            "FROM training_set GROUP BY 1").fetchall())
    n_train = con.execute("SELECT count(*) FROM training_set WHERE split = 'train'").fetchone()[0]
    keep = min(1.0, cfg.max_train_rows / max(n_train, 1))
    # above max_train_rows, keep every flash call and sample the rest (weights undo the sampling)
    tr = con.execute(f"""SELECT {cols}, is_flash, CASE WHEN is_flash = 1 THEN 1.0 ELSE 1.0 / {keep} END AS w
        FROM training_set WHERE split = 'train' AND (is_flash = 1 OR hash(call_id) % 1000000 < {keep * 1e6})
        ORDER BY start_time, operator, call_id""").fetchnumpy()
    truth_files = _truth_files(days.get("eval", []))
    truth = (f"(SELECT operator, call_id, truth FROM {_read_truth_sql(truth_files)})" if truth_files else
             "(SELECT NULL::VARCHAR AS operator, NULL::VARCHAR AS call_id, NULL::VARCHAR AS truth)")
    ev = con.execute(f"""SELECT {cols}, operator, is_flash, t.truth IS NOT NULL AS has_truth,
          coalesce(t.truth = 'flash', false) AS truth_flash
        FROM training_set LEFT JOIN {truth} t USING (operator, call_id)
        WHERE split = 'eval' ORDER BY start_time, operator, call_id""").fetchnumpy()
    op_days = dict(con.execute("SELECT operator, count(DISTINCT partition_date) FROM training_set "
                               "WHERE split = 'train' GROUP BY 1").fetchall())
    return days, tr, ev, op_days


def _metrics_or_none(y: np.ndarray, s: np.ndarray) -> dict | None:
    return C.evaluate(y, s) if len(y) and y.min() != y.max() else None


def _round(v, digits: int = 4):
    """Displayed metrics: 4 significant decimals, never 16-digit floats."""
    if isinstance(v, float):
        return round(v, digits)
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x, digits) for x in v]
    return v


@asset(group_name=GROUP, deps=[training_set], pool=WAREHOUSE_POOL,
       description="Flash-call candidates -- LightGBM, logistic regression and the velocity-rules baseline -- trained on "
                   "the same time split (validation fold for early stopping and thresholds), judged per operator and "
                   "overall against the weak labels (and simulator ground truth where it exists); the best passing "
                   "ML candidate is chosen for promotion.")
def flash_call_model(context: AssetExecutionContext, warehouse: Warehouse) -> Output[dict]:
    mc = load_model_config()
    cfg, g = mc.training, mc.gates
    names = model_inputs(mc)
    with warehouse.connect() as con:
        days, tr, ev, op_days = _load_training(con, names, cfg)
    train = C.Split(np.column_stack([tr[c] for c in names]).astype(np.float64) if len(tr["is_flash"]) else np.empty((0, len(names))),
                    tr["is_flash"].astype(int), tr["w"].astype(float))
    Xev = np.column_stack([ev[c] for c in names]).astype(np.float64) if len(ev["is_flash"]) else np.empty((0, len(names)))
    yev, ops_ev = ev["is_flash"].astype(int), ev["operator"].astype(str)
    cut = C.validation_cut(len(train.y), cfg.validation_share)
    fit, valid = train.rows(slice(0, cut)), train.rows(slice(cut, None))
    payloads: dict[str, dict] = {}
    if len(train.y) > 1 and fit.y.min() != fit.y.max():
        payloads["lightgbm"] = C.train_lightgbm(fit, valid, names, cfg)
        payloads["logistic_regression"] = C.train_linear(fit, names, cfg)
        payloads["rules"] = C.fit_rules(fit, names, mc.rules_baseline)
    else:
        context.log.warning("the training days hold a single class: only the shipped velocity rules are a candidate")
        payloads["rules"] = C.default_rules(mc.rules_baseline)

    # who is gated: operators with enough training days and enough flash labels to evaluate
    gated_ops = sorted(op for op in set(ops_ev) if op_days.get(op, 0) >= cfg.min_train_days
                       and (yev[ops_ev == op] == 1).sum() >= g.min_operator_positives)
    in_gate = np.isin(ops_ev, gated_ops)
    has_truth = ev["has_truth"].astype(bool)
    yt = ev["truth_flash"].astype(int)
    default_th = {"flag": mc.decision.flag, "block": mc.decision.block}
    results: dict[str, dict] = {}
    all_scores: dict[str, np.ndarray] = {}
    for name, payload in payloads.items():
        s = C.scores(payload, names, Xev) if len(Xev) else np.empty(0)
        all_scores[name] = s
        per_op = {}
        for op in sorted(set(ops_ev)):
            m = ops_ev == op
            per_op[op] = {"metrics": _metrics_or_none(yev[m], s[m]), "gated": op in gated_ops,
                          "training_days": int(op_days.get(op, 0)), "flash_labels": int(yev[m].sum()),
                          "vs_ground_truth": _metrics_or_none(yt[m & has_truth], s[m & has_truth])}
        results[name] = {
            "kind": C.KIND[name], "model_text": payload["model_text"], "rounds": payload.get("rounds"),
            "thresholds": C.fit_thresholds(valid.y, C.scores(payload, names, valid.X), mc.decision.flag_precision,
                                           mc.decision.block_precision, default_th) if len(valid.y) else default_th,
            "metrics": _metrics_or_none(yev[in_gate], s[in_gate]),
            "metrics_vs_ground_truth": _metrics_or_none(yt[has_truth], s[has_truth]),
            "per_operator": per_op,
            "golden_rows": _golden(names, Xev if len(Xev) else train.X, yev if len(Xev) else train.y, s if len(Xev) else
                                   C.scores(payload, names, train.X)),
        }
    rules_overall = results["rules"]["metrics"]
    for name, r in results.items():
        gated = {op: v["metrics"] for op, v in r["per_operator"].items() if v["gated"] and v["metrics"]}
        r["reasons"] = (["only the rules are fitted"] if name == "rules" else
                        C.gate_reasons(name, r["metrics"], gated, rules_overall, g))
    if "lightgbm" not in results:
        reasons_line = f"cannot train: {len(days.get('train', []))} training day(s) with a single class or no rows"
    else:
        reasons_line = C.rejection_line(results)
    chosen = C.choose(results)
    value = {
        "feature_names": names, "candidates": results, "chosen": chosen,
        "decision": f"promote {chosen}" if chosen else f"candidate rejected: {reasons_line}",
        "reasons": "" if chosen else reasons_line, "gated_operators": gated_ops,
        "trained_on": days.get("train", []), "evaluated_on": days.get("eval", []),
        "train_rows": int(len(train.y)), "eval_rows": int(len(yev)),
    }
    return Output(value, metadata=_model_metadata(value, all_scores, yev, in_gate, has_truth, yt, ops_ev))


def _golden(names: list[str], X: np.ndarray, y: np.ndarray, s: np.ndarray) -> list[dict]:
    """A few rows (flash and not) whose scores a loaded bundle must reproduce."""
    idx = list(np.flatnonzero(y == 1)[:3]) + list(np.flatnonzero(y == 0)[:3])
    return [{"features": dict(zip(names, map(float, X[i]))), "score": float(s[i])} for i in idx]


def _model_metadata(value: dict, all_scores: dict, yev, in_gate, has_truth, yt, ops_ev) -> dict:
    res = value["candidates"]
    rows = []
    for name, r in res.items():
        row = {"candidate": name, "passed": "yes" if not r["reasons"] else "no"}
        row.update({f"{k}": v for k, v in (r["metrics"] or {}).items()})
        if r["metrics_vs_ground_truth"]:
            row.update({f"truth {k}": v for k, v in r["metrics_vs_ground_truth"].items() if k in ("pr_auc", "recall_at_p99")})
        rows.append(row)
    per_op = []
    for name, r in res.items():
        for op, v in r["per_operator"].items():
            m = v["metrics"] or {}
            per_op.append({"candidate": name, "operator": op, "gated": "yes" if v["gated"] else f"no ({v['training_days']} train days, {v['flash_labels']} flash labels)",
                           "pr_auc": m.get("pr_auc"), "recall_at_p99": m.get("recall_at_p99"),
                           "precision_at_fpr_0_1pct": m.get("precision_at_fpr_0_1pct")})
    meta: dict = {
        "decision": value["decision"], "chosen": value["chosen"] or "none (candidate rejected)",
        "reasons": value["reasons"] or "all gates passed",
        "train_rows": value["train_rows"], "eval_rows": value["eval_rows"],
        "train_partitions": MetadataValue.json(value["trained_on"]), "eval_partitions": MetadataValue.json(value["evaluated_on"]),
        "candidates": MetadataValue.md("Against the weak labels on the evaluation days (what the gate judges); "
                                       "`truth …` against simulator ground truth where it exists.\n\n" + _md(pd.DataFrame(rows))),
        "per_operator": MetadataValue.md(_md(pd.DataFrame(per_op), 60)),
        "gated_operators": MetadataValue.json(value["gated_operators"]),
    }
    for name, r in res.items():
        for k, v in (r["metrics"] or {}).items():
            meta[f"{name}/{k}"] = _round(v)
        for k, v in (r["metrics_vs_ground_truth"] or {}).items():
            meta[f"truth/{name}/{k}"] = _round(v)
        if r.get("rounds"):
            meta[f"{name}/rounds"] = r["rounds"]
    if len(yev) and yev.min() != yev.max():
        targets = {"labels": (yev[in_gate], in_gate)} if in_gate.any() and yev[in_gate].min() != yev[in_gate].max() else {}
        if has_truth.any() and yt[has_truth].min() != yt[has_truth].max():
            targets["ground truth"] = (yt[has_truth], has_truth)
        if targets:
            meta["pr_curve"] = MetadataValue.md(charts.pr_curves(targets, all_scores))
        shown = value["chosen"] or ("lightgbm" if "lightgbm" in res else "rules")
        groups = {"labelled flash": yev == 1, "labelled not flash": yev == 0}
        meta["score_distribution"] = MetadataValue.md(charts.score_distribution(
            all_scores[shown], groups, res[shown]["thresholds"], f"{shown}: scores on the evaluation days by label"))
    return meta


# ---------------------------------------------------------------- blocking checks (gates)

def _serving_kind(instance) -> tuple[str | None, str | None]:
    """(kind, version) of the latest serving_model materialization (kind None: nothing served yet)."""
    event = instance.get_latest_materialization_event(AssetKey("serving_model"))
    if event is None or event.asset_materialization is None:
        return None, None
    md = event.asset_materialization.metadata
    kind = md["kind"].value if "kind" in md else "lightgbm"  # bundles from before kinds, and `voicefw promote` of one
    return kind, md["version"].value if "version" in md else None


def promotion_plan(value: dict, served_kind: str | None, served_version: str | None) -> tuple[str | None, str]:
    """(candidate to promote or None, why) -- the ONE place that decides what serving_model does:
    the chosen ML candidate; else, while no ML model has been served, the fitted velocity rules
    (so a fresh install scores from day one); else keep the ML model that is served."""
    if value["chosen"]:
        return value["chosen"], f"{value['chosen']} passed every gate"
    if served_kind in (None, "rules"):
        return "rules", f"candidate rejected: {value['reasons']}; serving the velocity rules until an ML candidate passes"
    return None, f"candidate rejected: {value['reasons']}; keeping the served {served_kind} model {served_version}"


@asset_check(asset=flash_call_model, blocking=True,
             description="An ML candidate clears the floors overall and per operator and beats the velocity rules. A rejected "
                         "candidate is a warning, not a failure: serving_model then keeps the served model, or serves the "
                         "velocity rules when no ML model has ever been promoted.")
def quality_gate(context: AssetCheckExecutionContext, flash_call_model: dict) -> AssetCheckResult:
    # Judged against the weak LABELS, not simulator ground truth: production data has no ground
    # truth, so a gate on truth would mean something different in simulation and in production.
    # The candidates' metrics vs truth are reported next to the gate's, so a label/truth gap cannot hide.
    plan, why = promotion_plan(flash_call_model, *_serving_kind(context.instance))
    res = flash_call_model["candidates"]
    meta = {"reasons": flash_call_model["reasons"] or "all gates passed", "decision": why,
            "judged_against": "weak labels", "chosen": flash_call_model["chosen"] or "none"}
    for name, r in res.items():
        for k in ("pr_auc", "recall_at_p99", "precision_at_fpr_0_1pct"):
            if r["metrics"]:
                meta[f"{name}/{k}"] = _round(r["metrics"][k])
            if r["metrics_vs_ground_truth"]:
                meta[f"truth/{name}/{k}"] = _round(r["metrics_vs_ground_truth"][k])
    passed = flash_call_model["chosen"] is not None
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.WARN, description=why, metadata=meta)


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
                                                           "reasons": "; ".join(problems) or "no leak found",
                                                           "inputs": len(flash_call_model["feature_names"])})


# ---------------------------------------------------------------- promotion and scoring

@asset(group_name=GROUP, pool=WAREHOUSE_POOL, output_required=False,
       description="The served bundle ($VOICEFW_HOME/models/<version>/): the chosen ML candidate; while no ML candidate "
                   "has ever passed, the velocity rules (kind rules); after a rejected candidate, nothing new (the "
                   "served model stays, the reasons are on quality_gate).")
def serving_model(context: AssetExecutionContext, flash_call_model: dict, warehouse: Warehouse, model_store: ModelStore):
    served_kind, served_version = _serving_kind(context.instance)
    name, why = promotion_plan(flash_call_model, served_kind, served_version)
    if name is None:
        context.log.warning(why)
        return
    cand = flash_call_model["candidates"][name]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with warehouse.connect() as con:
            last_day = con.execute("SELECT max(partition_date) FROM call_features").fetchone()[0]
            cut = f"TIMESTAMPTZ '{last_day.isoformat()} 00:00:00+00' + INTERVAL 1 DAY"
            con.execute(f"""COPY (
                SELECT operator, call_id, epoch_us(start_time) AS start_us, epoch_us(end_time) AS end_us, a_number,
                  b_number, ingress_trunk, coalesce(answered, false) AS answered, ring_s
                FROM mapped_cdrs WHERE start_time >= {cut} - INTERVAL {F.MAX_WINDOW_S} SECOND AND start_time < {cut}
                ORDER BY start_us, operator, call_id) TO {lit(str(state / STATE_FILE))} (HEADER, DELIMITER ',')""")
            n_state = con.execute(f"SELECT count(*) FROM read_csv({lit(str(state / STATE_FILE))})").fetchone()[0]
        assert list(STATE_COLUMNS) == (state / STATE_FILE).read_text().split("\n", 1)[0].split(",")
        (state / STATE_META).write_text(json.dumps({"timezones": _timezones(), "history_until": str(last_day)}, sort_keys=True))
        metrics = {"promoted": name, **{n: r["metrics"] for n, r in flash_call_model["candidates"].items()},
                   "vs_ground_truth": {n: r["metrics_vs_ground_truth"] for n, r in flash_call_model["candidates"].items()}}
        version, path = model_store.write(
            kind=cand["kind"], model_text=cand["model_text"], feature_names=flash_call_model["feature_names"],
            thresholds=cand["thresholds"], metrics=metrics, golden_rows=cand["golden_rows"],
            trained_on=flash_call_model["trained_on"], meta={"candidate": name, "why": why},
            state_files={STATE_FILE: state / STATE_FILE, STATE_META: state / STATE_META})
    verdict = verify_in_child(path)  # checksums, golden rows, in a child: a LightGBM abort is a refusal, not a dead run
    if not verdict.ok:
        raise Failure(f"the new bundle {path.name} was refused, nothing promoted: {verdict.reason}")
    yield MaterializeResult(metadata={
        "bundle_path": str(path), "version": version, "kind": cand["kind"], "candidate": name, "why": why,
        "thresholds": MetadataValue.json(_round(cand["thresholds"])), "state_calls": int(n_state),
        "history_until": str(last_day), "pr_auc": _round((cand["metrics"] or {}).get("pr_auc", float("nan"))),
        "trained_on": MetadataValue.json(flash_call_model["trained_on"]),
    })


def promoted_bundle(context: AssetExecutionContext) -> Bundle:
    """The bundle of the latest serving_model materialization (the same lookup the service does)."""
    event = context.instance.get_latest_materialization_event(AssetKey("serving_model"))
    if event is None or event.asset_materialization is None:
        raise ValueError("serving_model has never been materialized")
    return load_bundle(Path(event.asset_materialization.metadata["bundle_path"].value))


@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[call_features, serving_model], pool=WAREHOUSE_POOL,
       description="Every call of the day scored by the served model (any kind), with its allow/flag/block decision.")
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
    return MaterializeResult(metadata={"rows": n, "model_version": bundle.version, "model_kind": bundle.kind,
                                       "decisions": MetadataValue.md(_md(dec))})


def _trunk_list(col: str, shown: int = 2) -> str:
    """A range's trunks for the report: the first few and how many more (a long list would push the
    markdown table wider than the UI shows)."""
    return (f"CASE WHEN len({col}) <= {shown} THEN array_to_string({col}, ', ') ELSE "
            f"array_to_string({col}[1:{shown}], ', ') || ' +' || (len({col}) - {shown}) END")


@asset(group_name=GROUP, partitions_def=daily_partitions, deps=[scored_calls], pool=WAREHOUSE_POOL,
       description="Per A-range report for the fraud team: calls, distinct numbers, flagged calls, where seen; ranked, with "
                   "a chart of the top ranges' flagged calls over the day.")
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
            a_range, calls, flagged_calls AS flagged, flagged_share AS share, distinct_a_numbers AS a_nums,
            distinct_b_numbers AS b_nums, round(max_score, 3) AS max_score,
            strftime(first_seen, '%H:%M') || '-' || strftime(last_seen, '%H:%M') AS seen, operators,
            {_trunk_list("string_split(trunks, ',')")} AS trunks
            FROM suspicious_ranges WHERE partition_date = DATE '{day}' ORDER BY rank LIMIT 25""").df()
        over_day = con.execute(f"""SELECT time_bucket(INTERVAL 15 MINUTE, start_time) AS bucket, a_range,
              count(*) FILTER (WHERE decision <> 'allow') AS flagged
            FROM scored_calls WHERE partition_date = DATE '{day}'
              AND a_range IN (SELECT a_range FROM suspicious_ranges WHERE partition_date = DATE '{day}'
                              ORDER BY flagged_calls DESC, a_range LIMIT 8)
            GROUP BY ALL ORDER BY a_range, bucket""").df()
    meta = {"ranges": n, "report": MetadataValue.md(_md(top, 25))}
    if len(over_day):
        meta["flagged_over_day"] = MetadataValue.md(charts.flagged_over_day(over_day, f"{day}: flagged calls of the top ranges"))
    return MaterializeResult(metadata=meta)


assets = [call_features, call_labels, training_set, flash_call_model, serving_model, scored_calls, suspicious_ranges]
asset_checks = [quality_gate, leakage_guard]
