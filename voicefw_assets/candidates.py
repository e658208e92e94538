"""Flash-call candidates: train them, score them, judge them against the gate.

Candidates (every one scores through `model_bundle.score_matrix`, exactly as once promoted):
  lightgbm             gradient-boosted trees, early-stopped on the validation fold
  logistic_regression  a linear model over signed-log1p, standardized inputs
  rules                the velocity rules voice firewalls ship (`RULES`), thresholds fitted on the
                       training days and combined by a logistic scorecard: the baseline the ML
                       candidates are judged against, and the fallback served while none passes

Time order everywhere: training days, then their last `validation_share` of calls (by start
time) as the validation fold (early stopping, decision thresholds), then the evaluation days.
Metrics are what an operator acts on: recall at precision >= 0.99 and precision at 0.1 % FPR,
overall and per operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from voicefw_assets.model_bundle import contributions, rule_indicators, score_matrix, signed_log1p
from voicefw_assets.model_config import ModelConfig

ML = ("lightgbm", "logistic_regression")
KIND = {"lightgbm": "lightgbm", "logistic_regression": "linear", "rules": "rules"}



def rule_features(shipped: dict[str, dict[str, float]]) -> list[str]:
    """Every feature the velocity rules (model_config.yaml `rules_baseline`) read."""
    return sorted({f for conds in shipped.values() for f in conds})


@dataclass
class Split:
    """Feature rows in time order, with labels and sample weights."""

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray

    def rows(self, idx) -> "Split":
        return Split(self.X[idx], self.y[idx], self.w[idx])


def validation_cut(n: int, share: float) -> int:
    """Rows [0, cut) fit, [cut, n) validate (rows are in time order)."""
    return max(1, min(n - 1, int(round(n * (1 - share)))))


# ---------------------------------------------------------------- metrics

def evaluate(y: np.ndarray, s: np.ndarray) -> dict:
    """PR-AUC, ROC-AUC, recall at precision >= 0.99, precision at FPR <= 0.1 %."""
    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        raise ValueError("a single class: nothing to evaluate")
    p, r, _ = precision_recall_curve(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    pos, neg = y.sum(), len(y) - y.sum()
    i = np.flatnonzero(fpr <= 0.001)[-1]
    tp, fp = tpr[i] * pos, fpr[i] * neg
    return {
        "pr_auc": float(average_precision_score(y, s)),
        "roc_auc": float(roc_auc_score(y, s)),
        "recall_at_p99": float(r[p >= 0.99].max()) if (p >= 0.99).any() else 0.0,
        "precision_at_fpr_0_1pct": float(tp / (tp + fp)) if tp + fp > 0 else 0.0,
    }


def fit_thresholds(y: np.ndarray, s: np.ndarray, flag_precision: float, block_precision: float,
                   default: dict) -> dict:
    """Decision thresholds from the validation fold: flag from the lowest score at which precision
    reaches `flag_precision`, block where it reaches `block_precision` (config defaults when the
    fold cannot say)."""
    if len(y) == 0 or y.min() == y.max():
        return dict(default)
    p, _, th = precision_recall_curve(y, s)
    out = {}
    for name, target in (("flag", flag_precision), ("block", block_precision)):
        ok = np.flatnonzero(p[:-1] >= target)
        out[name] = float(th[ok[0]]) if ok.size else float(default[name])
    out["block"] = max(out["block"], out["flag"])
    return out


# ---------------------------------------------------------------- learners

def train_lightgbm(fit: Split, valid: Split, names: list[str], cfg) -> dict:
    """Trees early-stopped on the validation fold's log loss (an overfitting candidate stops early
    instead of running all `num_boost_round` rounds; average precision as the stopping metric
    costs a sort per round: 5x the training time, measured)."""
    params = {"objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
              "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": 0.8, "bagging_fraction": 0.8,
              "bagging_freq": 1, "lambda_l2": 1.0, "max_bin": 63, "metric": "binary_logloss",
              "seed": 7, "deterministic": True, "num_threads": 2, "verbose": -1}
    train = lgb.Dataset(fit.X, fit.y, weight=fit.w, feature_name=names, free_raw_data=True)
    callbacks = []
    sets = []
    if valid.y.min() != valid.y.max():
        sets = [lgb.Dataset(valid.X, valid.y, weight=valid.w, reference=train)]
        callbacks = [lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)]
    booster = lgb.train(params, train, num_boost_round=cfg.num_boost_round, valid_sets=sets, callbacks=callbacks)
    best = booster.best_iteration or booster.current_iteration()
    return {"kind": "lightgbm", "model_text": booster.model_to_string(num_iteration=best), "rounds": int(best)}


LINEAR_MAX_ROWS = 500_000  # a linear model of ~50 inputs learns nothing more from more rows; lbfgs time grows with them


def train_linear(fit: Split, names: list[str], cfg) -> dict:
    """Logistic regression on standardized signed-log1p inputs (weights undo sampling); above
    LINEAR_MAX_ROWS an evenly spaced subset of the (time-ordered) rows."""
    if len(fit.y) > LINEAR_MAX_ROWS:
        fit = fit.rows(np.linspace(0, len(fit.y) - 1, LINEAR_MAX_ROWS).astype(int))
    Z = signed_log1p(fit.X)
    mean, scale = Z.mean(axis=0), Z.std(axis=0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=cfg.linear_c, max_iter=300)
    lr.fit((Z - mean) / scale, fit.y, sample_weight=fit.w)
    model = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": lr.coef_[0].tolist(),
             "intercept": float(lr.intercept_[0]), "transform": "signed_log1p"}
    return {"kind": "linear", "model_text": json.dumps(model, indent=1)}


def _threshold_grid(col: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Candidate thresholds of one rule feature: quantiles of the flash calls' values and the upper
    tail of the others', never the minimum (a condition that always holds)."""
    grid = np.concatenate([np.quantile(col[pos], (0.25, 0.5, 0.75, 0.9)) if pos.any() else [],
                           np.quantile(col[~pos], (0.9, 0.99, 0.999)) if (~pos).any() else []])
    grid = np.unique(grid[grid > col.min()])
    return grid if grid.size else np.array([col.max() + 1.0])


def fit_rules(fit: Split, names: list[str], shipped: dict[str, dict[str, float]]) -> dict:
    """The shipped rules' shapes with thresholds refitted: per rule, the combination of candidate
    thresholds that maximizes the rule's own F1 on the training days; then one logistic weight per
    rule, so fired rules add up to a ranked score."""
    pos = fit.y == 1
    rules = []
    for rule_name, conds in shipped.items():
        feats = list(conds)
        cols = [fit.X[:, names.index(f)] for f in feats]
        grids = [_threshold_grid(c, pos) for c in cols]
        best, best_f1 = None, -1.0
        for combo in np.array(np.meshgrid(*grids)).T.reshape(-1, len(feats)):
            fired = np.logical_and.reduce([c >= t for c, t in zip(cols, combo)])
            tp = (fit.w * (fired & pos)).sum()
            f1 = 2 * tp / ((fit.w * fired).sum() + (fit.w * pos).sum())
            if f1 > best_f1:
                best, best_f1 = combo, f1
        rules.append({"name": rule_name, "conditions": [[f, ">=", float(t)] for f, t in zip(feats, best)],
                      "train_f1": round(float(best_f1), 4)})
    ind = rule_indicators(rules, fit.X, names)
    lr = LogisticRegression(C=10.0, max_iter=200).fit(ind, fit.y, sample_weight=fit.w)
    for rule, wgt in zip(rules, lr.coef_[0]):
        rule["weight"] = float(wgt)
    model = {"rules": rules, "intercept": float(lr.intercept_[0]), "fitted": True}
    return {"kind": "rules", "model_text": json.dumps(model, indent=1)}


def default_rules(shipped: dict[str, dict[str, float]]) -> dict:
    """The shipped velocity rules as they are, for when nothing can be fitted yet: one rule firing
    scores 0.5 (a flag at the default threshold), two score 0.95 (a block)."""
    rules = [{"name": n, "conditions": [[f, ">=", float(t)] for f, t in conds.items()], "weight": 3.0}
             for n, conds in shipped.items()]
    model = {"rules": rules, "intercept": -3.0, "fitted": False}
    return {"kind": "rules", "model_text": json.dumps(model, indent=1)}


def scorer(payload: dict, names: list[str]) -> SimpleNamespace:
    """A bundle-shaped object for `score_matrix` / `contributions` (no files needed)."""
    if payload["kind"] == "lightgbm":
        return SimpleNamespace(kind="lightgbm", booster=lgb.Booster(model_str=payload["model_text"]), feature_names=names)
    return SimpleNamespace(kind=payload["kind"], model=json.loads(payload["model_text"]), feature_names=names, booster=None)


def scores(payload: dict, names: list[str], X: np.ndarray) -> np.ndarray:
    return score_matrix(scorer(payload, names), X)


def top_reasons(payload: dict, names: list[str], X: np.ndarray, k: int = 3) -> list[list[str]]:
    """The k features pushing each row's score up most (for reports)."""
    c = contributions(scorer(payload, names), X)[:, :-1]
    return [[names[j] for j in np.argsort(-row)[:k] if row[j] > 0] for row in c]


# ---------------------------------------------------------------- the gate

def gate_reasons(name: str, overall: dict | None, per_operator: dict, rules_overall: dict | None, g) -> list[str]:
    """Why candidate `name` must not be promoted (empty: it may). Metrics are against the weak
    labels on the evaluation days; `per_operator` holds only operators with enough history."""
    if overall is None:
        return ["no evaluation days with both classes"]
    out = []
    if overall["pr_auc"] < g.min_pr_auc:
        out.append(f"PR-AUC {overall['pr_auc']:.3f} < {g.min_pr_auc}")
    if overall["recall_at_p99"] < g.min_recall_at_p99:
        out.append(f"recall@P99 {overall['recall_at_p99']:.3f} < {g.min_recall_at_p99}")
    if overall["precision_at_fpr_0_1pct"] < g.min_precision_at_fpr_0_1pct:
        out.append(f"precision@FPR0.1% {overall['precision_at_fpr_0_1pct']:.3f} < {g.min_precision_at_fpr_0_1pct}")
    if name in ML and rules_overall is not None:
        need = rules_overall["recall_at_p99"] + g.min_margin_recall_at_p99
        if overall["recall_at_p99"] < need:
            out.append(f"recall@P99 {overall['recall_at_p99']:.3f} < rules {rules_overall['recall_at_p99']:.3f} "
                       f"+ {g.min_margin_recall_at_p99}")
        if overall["pr_auc"] <= rules_overall["pr_auc"] + g.min_margin_pr_auc:
            out.append(f"PR-AUC {overall['pr_auc']:.3f} <= rules {rules_overall['pr_auc']:.3f} + {g.min_margin_pr_auc}")
    for op, m in sorted(per_operator.items()):
        if m["recall_at_p99"] < g.min_operator_recall_at_p99:
            out.append(f"{op}: recall@P99 {m['recall_at_p99']:.3f} < {g.min_operator_recall_at_p99}")
        if m["precision_at_fpr_0_1pct"] < g.min_operator_precision_at_fpr_0_1pct:
            out.append(f"{op}: precision@FPR0.1% {m['precision_at_fpr_0_1pct']:.3f} < {g.min_operator_precision_at_fpr_0_1pct}")
    return out


def choose(results: dict[str, dict]) -> str | None:
    """The passing ML candidate with the best PR-AUC against the labels (None: none passed)."""
    passing = [n for n in ML if n in results and not results[n]["reasons"]]
    return max(passing, key=lambda n: results[n]["metrics"]["pr_auc"], default=None)


def rejection_line(results: dict[str, dict]) -> str:
    """Every ML candidate's reasons in one line (what the CLI prints and the UI shows)."""
    return "; ".join(f"{n}: {', '.join(results[n]['reasons'])}" for n in ML if n in results and results[n]["reasons"])


def config_summary(mc: ModelConfig) -> dict:
    return json.loads(mc.model_dump_json())
