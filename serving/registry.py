"""Which model serves: the latest `serving_model` materialization in the Dagster instance.

The poller asks the instance (DAGSTER_HOME's dagster.yaml: SQLite or Postgres) for the newest
materialization, has a CHILD process load the bundle and score its golden rows (LightGBM aborts
the process on a malformed model, checksums or not), then verifies the checksums again here,
loads it, checks its golden rows and the fast scorer, and only then replaces the reference
requests read. A request takes `registry.current` once, so it sees exactly one model; a bundle
that fails any step is recorded as refused and the current model keeps serving. With no model
yet (start-up), a refused newest bundle makes the poller walk back to the newest promoted bundle
that verifies, and `newest_refused` says so.
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
from voicefw_assets import model_bundle
from voicefw_assets.bundle_verify import verify_in_child
from voicefw_assets.features import FEATURE_NAMES
from voicefw_assets.model_bundle import Bundle, load_bundle, score_matrix, verify_bundle

log = logging.getLogger("voicefw.serving")
DECISIONS = ("allow", "flag", "block")
WALK_BACK = 20  # promoted bundles tried, newest first, when the newest is refused at start-up


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
    predictor: FastPredictor | None = field(init=False)  # LightGBM bundles only

    def __post_init__(self) -> None:
        names = tuple(self.bundle.feature_names)
        object.__setattr__(self, "version", str(self.bundle.version))
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "columns", None if names == FEATURE_NAMES else [FEATURE_NAMES.index(n) for n in names])
        predictor = None
        if getattr(self.bundle, "kind", "lightgbm") == "lightgbm":
            predictor = FastPredictor(self.bundle.booster, len(names))
            X = _probe_rows(self.bundle, names)
            predictor.check(X, score_matrix(self.bundle, X))  # the fast path must equal batch scoring bit for bit
        object.__setattr__(self, "predictor", predictor)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Probabilities, exactly as batch scoring (`score_matrix`) computes them (checked at load)."""
        if self.predictor is None:
            return score_matrix(self.bundle, X)
        return self.predictor.predict(X)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions to the log-odds (last column = bias); TreeSHAP for LightGBM.

        About 5x the cost of a prediction for a 200-tree model, hence computed only for the
        rows whose reasons are asked for.
        """
        by_kind = getattr(model_bundle, "contributions", None)
        if by_kind is not None:
            return by_kind(self.bundle, X)
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
    newest_refused: Refusal | None = None  # the newest promoted bundle was refused: we serve an older one
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
            verdict = verify_in_child(bundle_path)  # a crash there is a refusal, not our death
            if not verdict.ok:
                raise BundleRefused(verdict.reason or "refused")
            verify_bundle(bundle_path)  # checksums again, here: the files the child loaded
            bundle = load_bundle(bundle_path)  # parses, checks golden rows
            if str(bundle.version) != verdict.version:
                raise BundleRefused(f"the bundle changed while it was verified ({verdict.version} -> {bundle.version})")
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
            reason = str(exc) if isinstance(exc, BundleRefused) else f"{type(exc).__name__}: {exc}"
            refusal = Refusal(str(bundle_path), version, reason, datetime.now(UTC))
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
        """Look at the latest serving_model materialization; load it if it is new to us. With no
        model yet and the newest refused, walk back to the newest promoted bundle that verifies."""
        from dagster import AssetKey

        result = self._dagster_instance().fetch_materializations(AssetKey(list(self.asset_key)), limit=WALK_BACK)
        records = result.records
        if not records or records[0].storage_id == self._seen_storage_id:
            return None
        self._seen_storage_id = records[0].storage_id  # a refused event is not retried; a newer one is
        model = self._load_record(records[0])
        if model is not None:
            self.newest_refused = None
            return model
        self.newest_refused = self.last_refused
        if self.current is not None:
            return None  # keep serving what we have
        tried = {self.last_refused.bundle_path if self.last_refused else None}
        for record in records[1:]:
            path, _ = _bundle_of(record)
            if path in tried:
                continue
            tried.add(path)
            model = self._load_record(record)
            if model is not None:
                log.warning("the newest promoted bundle was refused (%s); serving the older %s",
                            self.newest_refused.reason if self.newest_refused else "?", model.version)
                return model
        return None

    def _load_record(self, record) -> LoadedModel | None:
        path, version = _bundle_of(record)
        if path is None:
            refusal = Refusal("", None, "materialization has no bundle_path metadata", datetime.now(UTC))
            self.last_refused = refusal
            if self.on_refuse:
                self.on_refuse(refusal)
            return None
        return self.load(Path(path), version, record.storage_id)

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


class BundleRefused(Exception):
    """The reason is the whole message (no exception type in front)."""


def _bundle_of(record) -> tuple[str | None, str | None]:
    """(bundle_path, version) from a serving_model materialization's metadata."""
    materialization = record.asset_materialization
    metadata = materialization.metadata if materialization else {}
    path, version = metadata.get("bundle_path"), metadata.get("version")
    path, version = getattr(path, "value", path), getattr(version, "value", version)
    return (None if path is None else str(path)), (None if version is None else str(version))


def wait_for(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `predicate` until true or timeout; tests and the benchmark use it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()
