"""A small but real model bundle from synthetic calls, for the serving tests and benchmark.

It goes through the same code as production: features from `call_features_select` (DuckDB, in
memory: never the warehouse), a LightGBM booster, `model_bundle.write_bundle` with golden rows and
an online-history state, and a `serving_model` materialization recorded in a Dagster instance.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from voicefw_assets.batch_features import call_features_select
from voicefw_assets.features import FEATURE_NAMES
from voicefw_assets.model_bundle import score_matrix, write_bundle
from voicefw_assets.online_features import STATE_COLUMNS, STATE_FILE, STATE_META, to_us
from voicefw_assets.operators import operator_configs

OPERATORS = ("operator_a", "operator_b", "operator_c")
DAY1 = date(2026, 3, 2)  # history day (its calls are the bundle's state)
DAY2 = date(2026, 3, 3)  # the held-back day replayed through the API


@dataclass(frozen=True)
class Calls:
    """Canonical calls (E.164 numbers, UTC times) as mapped_cdrs would hold them."""

    frame: pd.DataFrame


def synthetic_calls(n_per_day: int = 1500, seed: int = 7) -> Calls:
    """Two days of calls with repeat callers, flash-like bursts from A-ranges, and repeat callees."""
    rng = np.random.default_rng(seed)
    rows = []
    b_pool = [f"+44770090{i:04d}" for i in range(300)] + [f"+4915112{i:05d}" for i in range(200)]
    a_pool = [f"+44207946{i:04d}" for i in range(200)] + [f"+4930123{i:04d}" for i in range(150)] + [
        f"+3312345{i:04d}" for i in range(50)
    ]
    flash_ranges = ["+4479001", "+3161234", "+234803123"]  # numbers of a valid length for their country
    for day in (DAY1, DAY2):
        day0 = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for k in range(n_per_day):
            flash = rng.random() < 0.15
            start = day0 + timedelta(microseconds=int(rng.integers(0, 86_400 * 1_000_000)))
            if k % 97 == 96:  # exact ties with an earlier call: strictly-earlier must exclude them
                start = rows[-1]["start_time"]  # the previous call of the same day
            if flash:
                a = f"{flash_ranges[int(rng.integers(0, 3))]}{int(rng.integers(0, 10_000)):04d}"
                answered, ring = False, float(np.round(rng.uniform(0.5, 3.5), 3))
            else:
                a = None if rng.random() < 0.05 else a_pool[int(rng.integers(0, len(a_pool)))]
                answered = rng.random() < 0.6
                ring = float(np.round(rng.uniform(2, 25), 3))
            b = b_pool[int(rng.integers(0, len(b_pool)))]
            duration = float(np.round(rng.uniform(5, 300), 3)) if answered else 0.0
            end = start + timedelta(seconds=ring + duration)
            rows.append(
                dict(
                    operator=OPERATORS[int(rng.integers(0, 3))], call_id=f"{day:%m%d}-{k:06d}",
                    partition_date=day, start_time=start, end_time=end, a_number=a, b_number=b,
                    ingress_trunk=f"trunk-{int(rng.integers(0, 6))}", answered=answered, ring_s=ring,
                    flash=flash,
                )
            )
    frame = pd.DataFrame(rows).sort_values(["start_time", "call_id"], kind="stable").reset_index(drop=True)
    return Calls(frame)


def timezones() -> dict[str, str]:
    return {name: cfg.timezone for name, cfg in operator_configs().items()}


def batch_features(calls: Calls, day: date) -> pd.DataFrame:
    """call_features for `day` exactly as the batch computes them (DuckDB SQL over a canonical table)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("calls_df", calls.frame.drop(columns=["flash"]))
    con.execute(
        "CREATE TABLE mapped AS SELECT operator, call_id, CAST(partition_date AS DATE) AS partition_date, "
        "CAST(start_time AS TIMESTAMPTZ) AS start_time, CAST(end_time AS TIMESTAMPTZ) AS end_time, "
        "a_number, b_number, ingress_trunk, answered, ring_s FROM calls_df"
    )
    out = con.execute(call_features_select(con, day.isoformat(), timezones(), source="mapped")).df()
    con.close()
    return out


def write_state(calls: Calls, day: date, directory: Path) -> dict[str, Path]:
    """The online-history state a bundle carries: the calls of `day` (the last 24 h), with outcomes."""
    directory.mkdir(parents=True, exist_ok=True)
    f = calls.frame[calls.frame["partition_date"] == day]
    with (directory / STATE_FILE).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(STATE_COLUMNS)
        for r in f.itertuples(index=False):
            w.writerow([r.operator, r.call_id, to_us(r.start_time), to_us(r.end_time), r.a_number or "",
                        r.b_number, r.ingress_trunk or "", "true" if r.answered else "false", r.ring_s])
    (directory / STATE_META).write_text(json.dumps({"timezones": timezones(), "cut": day.isoformat()}))
    return {STATE_FILE: directory / STATE_FILE, STATE_META: directory / STATE_META}


def build_bundle(models_dir: Path, calls: Calls | None = None, seed: int = 1, rounds: int = 60,
                 num_leaves: int = 15) -> tuple[str, Path]:
    """Train on DAY1's batch features (label: the synthetic flash flag) and write a bundle whose
    state is DAY1's calls, so DAY2 can be replayed through the service."""
    calls = calls or synthetic_calls()
    feats = batch_features(calls, DAY1)
    labels = calls.frame.set_index("call_id").loc[feats["call_id"], "flash"].to_numpy().astype(int)
    X = feats[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    params = {"objective": "binary", "learning_rate": 0.1, "num_leaves": num_leaves, "min_data_in_leaf": 5,
              "verbose": -1, "seed": seed, "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(X, labels, feature_name=list(FEATURE_NAMES)), num_boost_round=rounds)
    state = write_state(calls, DAY1, models_dir / f".state-{seed}")

    golden_X = X[:8]
    scores = score_matrix(SimpleNamespace(booster=booster), golden_X)  # score_matrix reads only .booster
    golden = [{"features": dict(zip(FEATURE_NAMES, map(float, row), strict=True)), "score": float(s)}
              for row, s in zip(golden_X, scores, strict=True)]
    return write_bundle(
        models_dir, model_text=booster.model_to_string(), feature_names=list(FEATURE_NAMES),
        thresholds={"flag": 0.5, "block": 0.9}, metrics={"synthetic": True, "seed": seed, "rounds": rounds},
        golden_rows=golden, trained_on=[DAY1.isoformat()], state_files=state,
    )


def record_serving_model(instance, bundle_path: Path, version: str) -> None:
    """Announce a bundle the way the serving_model asset does: a materialization with its metadata."""
    from dagster import AssetKey, AssetMaterialization

    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=AssetKey("serving_model"),
                             metadata={"bundle_path": str(bundle_path), "version": version})
    )


def raw_number(e164: str | None, operator: str) -> str | None:
    """An E.164 number written the way the operator's switch would send it."""
    if e164 is None:
        return "anonymous"
    plan = operator_configs()[operator].numbers
    if plan.unprefixed == "international":
        return e164[1:]
    if e164.startswith("+" + plan.country_code):
        national = plan.national_prefix + e164[1 + len(plan.country_code):]
        return f"{national[:4]} {national[4:]}"
    return plan.international_prefix + e164[1:]


def replay_events(calls: Calls, day: date) -> list[tuple[str, dict]]:
    """The day's starts (score requests, operator-format numbers) and ends, in time order.

    The previous day's ends are already in the bundle state (a CDR exists only once a call ended).
    """
    f = calls.frame
    events: list[tuple[int, int, str, dict]] = []
    for r in f[f["partition_date"] == day].itertuples(index=False):
        events.append((to_us(r.start_time), 1, "score", {
            "operator": r.operator, "call_id": r.call_id, "start_time": r.start_time.isoformat(),
            "a_number": raw_number(r.a_number, r.operator), "b_number": raw_number(r.b_number, r.operator),
            "ingress_trunk": r.ingress_trunk}))
    for r in f[f["partition_date"] == day].itertuples(index=False):
        events.append((to_us(r.end_time), 0, "end", {
                "operator": r.operator, "call_id": r.call_id, "end_time": r.end_time.isoformat(),
                "answered": bool(r.answered), "ring_s": float(r.ring_s)}))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(kind, body) for _, _, kind, body in events]
