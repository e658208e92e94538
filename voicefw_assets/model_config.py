"""The modeling configuration: voicefw_assets/model_config.yaml is the one place for the values of
label rules, training window, promotion gates and decision thresholds; this module gives them types.
$VOICEFW_MODEL_CONFIG names a YAML whose keys override the shipped ones (a partial file is fine)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PATH = Path(__file__).with_name("model_config.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelConfig(_Strict):
    """Label rules (voicefw_assets/labels.py explains each)."""

    flash_max_ring_s: float
    max_answered_s: float
    campaign_levels: tuple[int, ...]
    campaign_min_calls: int = Field(ge=1)
    campaign_min_share: float = Field(ge=0, le=1)
    campaign_min_distinct: float = Field(ge=0, le=1)
    wangiri_min_b_numbers: int
    burst_window_s: int = Field(ge=1)
    burst_min_calls: int
    burst_min_ratio: float
    callback_window_h: int


class TrainingConfig(_Strict):
    window_days: int = Field(ge=2)
    eval_days: int = Field(ge=1)  # at most; fewer when fewer than eval_days + min_train_days days exist
    min_train_days: int = Field(ge=1)
    max_train_rows: int
    num_boost_round: int
    learning_rate: float
    num_leaves: int


class GateConfig(_Strict):
    min_pr_auc: float
    min_precision_at_fpr_0_1pct: float
    min_recall_at_p99: float
    min_margin_pr_auc: float
    min_margin_recall_at_p99: float


class RulesConfig(_Strict):
    calls_per_min_per_a_range: float
    short_unanswered_share: float


class DecisionConfig(_Strict):
    flag: float
    block: float


class ModelConfig(_Strict):
    labels: LabelConfig
    training: TrainingConfig
    gates: GateConfig
    rules_baseline: RulesConfig
    decision: DecisionConfig


def load_model_config(path: Path | None = None) -> ModelConfig:
    """The shipped YAML, with the sections of `path` (or $VOICEFW_MODEL_CONFIG) laid over it."""
    data = yaml.safe_load(DEFAULT_PATH.read_text())
    override = path or (Path(os.environ["VOICEFW_MODEL_CONFIG"]) if os.environ.get("VOICEFW_MODEL_CONFIG") else None)
    if override is not None and override.resolve() != DEFAULT_PATH.resolve():
        for section, values in (yaml.safe_load(override.read_text()) or {}).items():
            data[section] = {**data.get(section, {}), **(values or {})} if isinstance(values, dict) else values
    return ModelConfig(**data)
