"""Where runtime data lives. One place, read from the environment, so tests can point it anywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    """Every runtime location derives from VOICEFW_HOME (default ./data)."""

    home: Path

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def ground_truth(self) -> Path:
        return self.home / "ground_truth"


def voicefw_home() -> Path:
    return Path(os.environ.get("VOICEFW_HOME", REPO_ROOT / "data")).resolve()


def paths() -> Paths:
    return Paths(voicefw_home())


def operator_config_dir() -> Path:
    return Path(os.environ.get("VOICEFW_OPERATOR_CONFIGS", REPO_ROOT / "operator_configs")).resolve()


def first_partition_date() -> str:
    """Oldest UTC day a call may start on. Day partitions are created from the landed data (see
    voicefw_assets/partitions.py); this only keeps impossible dates (epoch 0, typos) out of them."""
    return os.environ.get("VOICEFW_START_DATE", "2000-01-01")
