"""The modeling configuration: voicefw_assets/model_config.yaml is the one place for the values of
label rules, training window, promotion gates and decision thresholds; this module gives them types.
$VOICEFW_MODEL_CONFIG names a YAML whose keys override the shipped ones (a partial file is fine)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PATH = Path(__file__).with_name("model_config.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelConfig(_Strict):
    """Label rules (voicefw_assets/labels.py explains each)."""

    flash_max_ring_s: float
    max_answered_s: float
    campaign_max_ring_s: float
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
    validation_share: float = Field(gt=0, lt=1)
    max_train_rows: int
    num_boost_round: int
    early_stopping_rounds: int = Field(ge=1)
    learning_rate: float
    num_leaves: int
    min_data_in_leaf: int
    linear_c: float = Field(gt=0)


class GateConfig(_Strict):
    min_pr_auc: float
    min_precision_at_fpr_0_1pct: float
    min_recall_at_p99: float
    min_margin_pr_auc: float
    min_margin_recall_at_p99: float
    min_operator_recall_at_p99: float
    min_operator_precision_at_fpr_0_1pct: float
    min_operator_positives: int = Field(ge=1)


class DecisionConfig(_Strict):
    flag: float
    block: float
    flag_precision: float = Field(gt=0, le=1)
    block_precision: float = Field(gt=0, le=1)


class ModelConfig(_Strict):
    labels: LabelConfig
    training: TrainingConfig
    gates: GateConfig
    # velocity rules: rule name -> {history feature: shipped threshold (fires at >=)}
    rules_baseline: dict[str, dict[str, float]]
    decision: DecisionConfig

    @model_validator(mode="after")
    def _rules_read_features(self):
        from voicefw_assets.features import FEATURE_NAMES

        for rule, conds in self.rules_baseline.items():
            unknown = [f for f in conds if f not in FEATURE_NAMES]
            if not conds or unknown:
                raise ValueError(f"rules_baseline.{rule}: needs conditions on call features; unknown: {unknown}")
        return self


def load_model_config(path: Path | None = None) -> ModelConfig:
    """The shipped YAML, with the sections of `path` (or $VOICEFW_MODEL_CONFIG) laid over it."""
    data = yaml.safe_load(DEFAULT_PATH.read_text())
    override = path or (Path(os.environ["VOICEFW_MODEL_CONFIG"]) if os.environ.get("VOICEFW_MODEL_CONFIG") else None)
    if override is not None and override.resolve() != DEFAULT_PATH.resolve():
        for section, values in (yaml.safe_load(override.read_text()) or {}).items():
            data[section] = {**data.get(section, {}), **(values or {})} if isinstance(values, dict) else values
    return ModelConfig(**data)
