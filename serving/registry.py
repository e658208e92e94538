"""Which model serves: the latest `serving_model` materialization in the Dagster instance.

The poller asks the instance (DAGSTER_HOME's dagster.yaml: SQLite or Postgres) for the newest
materialization, verifies the bundle's checksums BEFORE parsing anything (a truncated LightGBM
file kills the process), loads it, checks its golden rows, and only then replaces the reference
requests read. A request takes `registry.current` once, so it sees exactly one model; a bundle
that fails any step is recorded as refused and the current model keeps serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

import numpy as np

from serving.predict import FastPredictor
from voicefw_assets.features import FEATURE_NAMES
from voicefw_assets.model_bundle import Bundle, load_bundle, score_matrix, verify_bundle

log = logging.getLogger("voicefw.serving")
DECISIONS = ("allow", "flag", "block")


@dataclass(frozen=True)
class Refusal:
    bundle_path: str
    version: str | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class LoadedModel:
    """A verified bundle plus what scoring needs precomputed."""

    bundle: Bundle
    storage_id: int | None  # the Dagster event that announced it (None: loaded by path)
    loaded_at: datetime
    flag_threshold: float
    block_threshold: float
    version: str = field(init=False)
    feature_names: tuple[str, ...] = field(init=False)
    # positions of the model's features in FEATURE_NAMES (the online row's order); None when identical
    columns: list[int] | None = field(init=False)
    predictor: FastPredictor = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(self.bundle.feature_names)
        object.__setattr__(self, "version", str(self.bundle.version))
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "columns", None if names == FEATURE_NAMES else [FEATURE_NAMES.index(n) for n in names])
        predictor = FastPredictor(self.bundle.booster, len(names))
        X = _probe_rows(self.bundle, names)
        predictor.check(X, score_matrix(self.bundle, X))  # the fast path must equal batch scoring bit for bit
        object.__setattr__(self, "predictor", predictor)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Probabilities, exactly as batch scoring (`score_matrix`) computes them (checked at load)."""
        return self.predictor.predict(X)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the log-odds (TreeSHAP; last column = bias).

        About 5x the cost of a prediction for a 200-tree model, hence computed only for the
        rows whose reasons are asked for.
        """
        return self.bundle.booster.predict(X, pred_contrib=True, num_threads=1)

    def decisions(self, probabilities: list[float]) -> list[str]:
        """allow below flag, flag from flag, block from block (flag <= block is checked at load)."""
        flag, block = self.flag_threshold, self.block_threshold
        return [DECISIONS[(p >= flag) + (p >= block)] for p in probabilities]


def _probe_rows(bundle: Bundle, names: tuple[str, ...]) -> np.ndarray:
    """The golden rows plus varied synthetic rows: inputs on which the two scoring paths are compared."""
    golden = [[float(r["features"][n]) for n in names] for r in bundle.golden_rows]
    rng = np.random.default_rng(0)
    scale = rng.choice([1.0, 10.0, 100.0, 3600.0, 86400.0], size=(64, len(names)))
    synthetic = np.round(rng.random((64, len(names))) * scale, 3) - (rng.random((64, len(names))) < 0.1)
    return np.ascontiguousarray(np.vstack([np.array(golden).reshape(-1, len(names)), synthetic]), dtype=np.float64)


def _threshold(override: float | None, bundle: Bundle, name: str, default: float) -> float:
    if override is not None:
        return override
    value = (bundle.thresholds or {}).get(name)
    return float(value) if value is not None and not math.isnan(float(value)) else default


@dataclass
class ModelRegistry:
    """Holds the serving model; swaps it only for a bundle that passed every check."""

    flag_override: float | None = None
    block_override: float | None = None
    asset_key: tuple[str, ...] = ("serving_model",)
    on_swap: Callable[[LoadedModel], None] | None = None
    on_refuse: Callable[[Refusal], None] | None = None
    current: LoadedModel | None = None
    last_refused: Refusal | None = None
    swaps: int = 0
    last_poll_error: str | None = None  # why the Dagster instance could not be asked (e.g. DAGSTER_HOME unset)
    _seen_storage_id: int | None = None
    _instance: object | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # ---------------------------------------------------------------- loading
    def load(self, bundle_path: Path, version: str | None = None, storage_id: int | None = None) -> LoadedModel | None:
        """Verify, load and check a bundle; install it on success, record a refusal otherwise."""
        try:
            verify_bundle(bundle_path)  # checksums first: never hand a damaged file to LightGBM
            bundle = load_bundle(bundle_path)  # verifies again, parses, checks golden rows
            if version is not None and str(bundle.version) != str(version):
                raise ValueError(f"bundle says version {bundle.version!r}, the materialization says {version!r}")
            unknown = [n for n in bundle.feature_names if n not in FEATURE_NAMES]
            if unknown:
                raise ValueError(f"the model needs features this service does not compute: {unknown}")
            model = LoadedModel(
                bundle=bundle,
                storage_id=storage_id,
                loaded_at=datetime.now(UTC),
                flag_threshold=_threshold(self.flag_override, bundle, "flag", 0.5),
                block_threshold=_threshold(self.block_override, bundle, "block", 0.9),
            )
            if not 0.0 <= model.flag_threshold <= model.block_threshold <= 1.0:
                raise ValueError(f"thresholds must satisfy 0 <= flag <= block <= 1: {model.flag_threshold}, {model.block_threshold}")
            if self.on_swap:
                self.on_swap(model)  # e.g. build the online history from the bundle state, before requests see it
        except Exception as exc:  # BundleError, lightgbm errors, bad metadata: all mean "do not serve"
            refusal = Refusal(str(bundle_path), version, f"{type(exc).__name__}: {exc}", datetime.now(UTC))
            self.last_refused = refusal
            log.warning("refused bundle %s (version %s): %s", bundle_path, version, refusal.reason)
            if self.on_refuse:
                self.on_refuse(refusal)
            return None
        self.current = model  # one reference assignment: atomic for readers
        self.swaps += 1
        log.info("serving model version %s from %s", model.version, bundle_path)
        return model

    # ---------------------------------------------------------------- discovery
    def _dagster_instance(self):
        if self._instance is None:
            from dagster import DagsterInstance

            self._instance = DagsterInstance.get()
        return self._instance

    def poll_once(self) -> LoadedModel | None:
        """Look at the latest serving_model materialization; load it if it is new to us."""
        from dagster import AssetKey

        result = self._dagster_instance().fetch_materializations(AssetKey(list(self.asset_key)), limit=1)
        record = result.records[0] if result.records else None
        if record is None or record.storage_id == self._seen_storage_id:
            return None
        self._seen_storage_id = record.storage_id  # a refused event is not retried; a newer one is
        materialization = record.asset_materialization
        metadata = materialization.metadata if materialization else {}
        path = metadata.get("bundle_path")
        version = metadata.get("version")
        path_value = getattr(path, "value", path)
        version_value = getattr(version, "value", version)
        if path_value is None:
            refusal = Refusal("", None, "materialization has no bundle_path metadata", datetime.now(UTC))
            self.last_refused = refusal
            if self.on_refuse:
                self.on_refuse(refusal)
            return None
        version_text = None if version_value is None else str(version_value)
        return self.load(Path(str(path_value)), version_text, record.storage_id)

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
                self.last_poll_error = None
            except Exception as exc:  # the instance may be briefly unreachable (Postgres restart): keep serving
                if self.last_poll_error is None:  # log once per outage, not every interval
                    log.exception("polling the Dagster instance failed; will retry")
                self.last_poll_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(interval_s)

    def start(self, interval_s: float) -> None:
        """Poll in a daemon thread: loading a bundle never blocks the event loop."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="model-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._instance is not None:
            try:
                self._instance.dispose()
            except Exception:
                pass
            self._instance = None


def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `predicate` until true or timeout; tests and the benchmark use it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()
