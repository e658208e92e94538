"""Service settings, read from the environment once at start-up (same in docker and locally)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal


def _float_or_none(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else None


def _rate_limit(text: str) -> tuple[str, int] | None:
    """'second:5000' -> ('second', 5000); 'off' or '' -> no limit."""
    text = text.strip().lower()
    if text in ("", "off", "0", "none"):
        return None
    unit, _, count = text.partition(":")
    if unit not in ("second", "minute", "hour", "day") or not count.isdigit():
        raise ValueError(f"VOICEFW_RATE_LIMIT={text!r}: expected unit:count, e.g. second:5000")
    return unit, int(count)


def _reasons_for(text: str) -> Literal["flagged", "all"]:
    if text not in ("flagged", "all"):
        raise ValueError(f"VOICEFW_REASONS={text!r}: expected 'flagged' or 'all'")
    return text  # type: ignore[return-value]


@dataclass(frozen=True)
class ServingSettings:
    """Knobs of the scoring service; every one has an environment variable."""

    api_keys: frozenset[str] = frozenset()  # empty: no authentication (local use)
    poll_interval_s: float = 10.0  # how often the Dagster instance is asked for a newer serving_model
    max_batch: int = 1000  # calls per /v1/score/batch request
    max_body_bytes: int = 1_000_000
    rate_limit: tuple[str, int] | None = ("second", 20_000)  # per API key, else per client address
    online_store: str = "memory"  # or redis://host:port/db (shared by workers, replicas and restarts)
    store_timeout_s: float = 0.5  # per Redis call; a dead or stuck Redis never stalls a request longer
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-For is believed (uvicorn)
    flag_threshold: float | None = None  # None: the bundle's thresholds
    block_threshold: float | None = None
    top_reasons: int = 3
    reasons_for: Literal["flagged", "all"] = "flagged"  # flagged: only flag/block decisions carry reasons
    asset_key: tuple[str, ...] = field(default=("serving_model",))

    @classmethod
    def from_env(cls) -> ServingSettings:
        keys = os.environ.get("VOICEFW_API_KEYS", "")
        return cls(
            api_keys=frozenset(k.strip() for k in keys.split(",") if k.strip()),
            poll_interval_s=float(os.environ.get("VOICEFW_POLL_INTERVAL_S", "10")),
            max_batch=int(os.environ.get("VOICEFW_MAX_BATCH", "1000")),
            max_body_bytes=int(os.environ.get("VOICEFW_MAX_BODY_BYTES", "1000000")),
            rate_limit=_rate_limit(os.environ.get("VOICEFW_RATE_LIMIT", "second:20000")),
            flag_threshold=_float_or_none("VOICEFW_FLAG_THRESHOLD"),
            block_threshold=_float_or_none("VOICEFW_BLOCK_THRESHOLD"),
            top_reasons=int(os.environ.get("VOICEFW_TOP_REASONS", "3")),
            reasons_for=_reasons_for(os.environ.get("VOICEFW_REASONS", "flagged")),
            online_store=os.environ.get("VOICEFW_ONLINE_STORE", "memory").strip() or "memory",
            store_timeout_s=float(os.environ.get("VOICEFW_STORE_TIMEOUT_S", "0.5")),
            trusted_proxies=tuple(p.strip() for p in os.environ.get("VOICEFW_TRUSTED_PROXIES", "").split(",") if p.strip()),
        )
