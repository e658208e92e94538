"""The modeling configuration (voicefw_assets/model_config.yaml): one place for label rules,
training window, promotion gates and decision thresholds. $VOICEFW_MODEL_CONFIG overrides the path."""

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

    flash_max_ring_s: float = 4.0
    max_answered_s: float = 5.0
    campaign_levels: tuple[int, ...] = (4, 5, 6)
    campaign_min_calls: int = Field(5, ge=1)
    campaign_min_share: float = Field(0.5, ge=0, le=1)
    campaign_min_distinct: float = Field(0.7, ge=0, le=1)
    wangiri_min_b_numbers: int = 20
    burst_window_s: int = Field(300, ge=1)
    burst_min_calls: int = 8
    burst_min_ratio: float = 3.0
    callback_window_h: int = 24


class TrainingConfig(_Strict):
    window_days: int = Field(7, ge=2)
    eval_days: int = Field(2, ge=1)  # at most; fewer when fewer than eval_days + min_train_days days exist
    min_train_days: int = Field(2, ge=1)
    max_train_rows: int = 2_000_000
    num_boost_round: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 15


class GateConfig(_Strict):
    min_pr_auc: float = 0.6
    min_precision_at_fpr_0_1pct: float = 0.8
    min_recall_at_p99: float = 0.0
    min_margin_pr_auc: float = 0.0
    min_margin_recall_at_p99: float = 0.0


class RulesConfig(_Strict):
    calls_per_min_per_a_range: float = 5
    short_unanswered_share: float = 0.6


class DecisionConfig(_Strict):
    flag: float = 0.5
    block: float = 0.9


class ModelConfig(_Strict):
    labels: LabelConfig = LabelConfig()
    training: TrainingConfig = TrainingConfig()
    gates: GateConfig = GateConfig()
    rules_baseline: RulesConfig = RulesConfig()
    decision: DecisionConfig = DecisionConfig()


def load_model_config(path: Path | None = None) -> ModelConfig:
    path = path or Path(os.environ.get("VOICEFW_MODEL_CONFIG", DEFAULT_PATH))
    return ModelConfig(**(yaml.safe_load(path.read_text()) or {}))
