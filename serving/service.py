"""ScoringService: canonical calls, the history store, the model, decisions and reasons."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import numpy as np

from serving.errors import Refused, invalid
from serving.history_store import HistoryStore, RateToken, StoreUnavailable, open_store
from serving.metrics import ServiceMetrics
from serving.numbers import InvalidNumber, normalize_number
from serving.registry import LoadedModel, ModelRegistry, Refusal
from serving.number_patterns import number_pattern
from serving.schemas import EndAck, Reason, RequestTypes, ScoreResult
from serving.settings import ServingSettings
from voicefw_assets.operators import NumberPlan, operator_configs

log = logging.getLogger("voicefw.serving")


def _utc(text: str) -> datetime:
    """A time that matched schemas.TIME_PATTERN, in UTC (exact: microseconds at most)."""
    return datetime.fromisoformat(text).astimezone(UTC)


class ScoringService:
    """Everything a request needs: settings, the model registry, the history store, metrics."""

    def __init__(self, settings: ServingSettings, registry: ModelRegistry | None = None,
                 store: HistoryStore | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.store = store or open_store(settings.online_store, settings.store_timeout_s)
        self.metrics.store = self.store
        self.registry = registry or ModelRegistry(
            flag_override=settings.flag_threshold,
            block_override=settings.block_threshold,
            asset_key=settings.asset_key,
        )
        self.registry.on_swap = self._on_swap
        self.registry.on_refuse = self._on_refuse
        self.metrics.registry = self.registry
        configs = operator_configs()
        self.plans: dict[str, NumberPlan] = {name: cfg.numbers for name, cfg in configs.items()}
        a_patterns = {op: number_pattern(plan, withheld=True) for op, plan in self.plans.items()}
        b_patterns = {op: number_pattern(plan, withheld=False) for op, plan in self.plans.items()}
        self.requests = RequestTypes({op: cfg.description for op, cfg in configs.items()}, a_patterns, b_patterns)
        # what a refused number is told: the forms its operator's plan accepts
        self.readable = {pat: f"a number as {op} writes it (digits with optional single ' ', '.', '-' or '/' "
                              f"between them: +<E.164>, <international prefix><E.164>, or a national number)"
                         for patterns in (a_patterns, b_patterns) for op, pat in patterns.items()}
        self._numbers: dict[tuple[str, str | None], str | None] = {}  # (operator, raw) -> E.164, bounded
        self._reseeding = threading.Lock()

    # ---- model lifecycle (poller thread)
    def _on_refuse(self, _refusal: Refusal) -> None:
        self.metrics.refusals += 1

    def _on_swap(self, model: LoadedModel) -> None:
        """Before the model becomes visible: the store is seeded from the FIRST bundle's state when
        it is empty; later bundles never replace history the store already holds."""
        if not self.store.ready():
            self.store.prepare(model.bundle.state_dir, model.version)
        self.metrics.set_model(model.version)

    def reseed_in_background(self) -> None:
        """The shared store lost its data (Redis restarted empty): seed it again, once per process."""
        if not self._reseeding.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.store.reseed()
            except Exception:
                log.exception("re-seeding the online store failed; will retry on the next request")
            finally:
                self._reseeding.release()

        threading.Thread(target=run, name="store-reseed", daemon=True).start()

    # ---- validation (no state is touched)
    def _normalize(self, operator: str, raw: str | None, plan: NumberPlan) -> str | None:
        """normalize_number with a bounded memo: switches send the same numbers over and over."""
        key = (operator, raw)
        try:
            return self._numbers[key]
        except KeyError:
            pass
        value = normalize_number(raw, plan)  # InvalidNumber propagates and is not cached
        if len(self._numbers) >= 200_000:
            self._numbers.clear()
        self._numbers[key] = value
        return value

    def _plan(self, operator: str, where: str) -> NumberPlan:
        plan = self.plans.get(operator)
        if plan is None:
            raise invalid(f"{where}operator", f"unknown operator {operator!r}; known: {sorted(self.plans)}")
        return plan

    def canonical(self, call, where: str = "") -> tuple:
        """(operator, call_id, UTC start, E.164 A or None, E.164 B, trunk) as the batch features see it."""
        plan = self._plan(call.operator, where)
        try:
            a_number = self._normalize(call.operator, call.a_number, plan)
        except InvalidNumber as exc:
            raise invalid(f"{where}a_number", str(exc)) from None
        try:
            b_number = self._normalize(call.operator, call.b_number, plan)
        except InvalidNumber as exc:
            raise invalid(f"{where}b_number", str(exc)) from None
        if b_number is None:
            raise invalid(f"{where}b_number", "b_number is required (withheld or empty is not a callee)")
        trunk = call.ingress_trunk
        if trunk is not None:
            trunk = trunk.strip(" ") or None  # as the mapping: trimmed, '' is NULL
        return (call.operator, call.call_id, _utc(call.start_time), a_number, b_number, trunk)

    def canonical_all(self, calls: list, batch: bool) -> list[tuple]:
        """Every call validated and canonical, before the history records any of them."""
        if batch:
            return [self.canonical(c, f"calls[{i}].") for i, c in enumerate(calls)]
        return [self.canonical(calls[0])]

    def canonical_end(self, end) -> tuple:
        end_time = _utc(end.end_time)
        ring_s = end.ring_s
        if ring_s is None and end.start_time is not None:  # as mapping.py: coalesce(answer, end) - start
            answered_or_end = _utc(end.answer_time) if end.answer_time else end_time
            ring_s = (answered_or_end - _utc(end.start_time)).total_seconds()
        return (end.operator, end.call_id, end_time, end.answered, ring_s)

    # ---- requests
    def model_or_503(self) -> LoadedModel:
        model = self.registry.current
        if model is None:
            refused, poll_error = self.registry.last_refused, self.registry.last_poll_error
            why = f" (last bundle refused: {refused.reason})" if refused else ""
            why += f" (cannot read the Dagster instance: {poll_error})" if poll_error else ""
            raise Refused(503, "no model loaded yet: waiting for a valid serving_model materialization in the "
                               "Dagster instance" + why, headers={"Retry-After": "1"})
        if not self.store.ready():
            self.reseed_in_background()
            raise Refused(503, f"online store not ready: {self.store.health()}", headers={"Retry-After": "1"})
        return model

    def unavailable(self, exc: StoreUnavailable) -> Refused:
        self.metrics.store_errors += 1
        if not self.store.ready():
            self.reseed_in_background()
        return Refused(503, exc.reason, headers={"Retry-After": str(exc.retry_after_s)})

    def score(self, model: LoadedModel, canon: list[tuple], rate: RateToken | None, include_features: bool,
              explain: bool) -> list[ScoreResult]:
        """Features in start-time order (each call sees the earlier ones), one predict for all.

        Reasons (TreeSHAP contributions) cost ~5x a prediction, so by default only flag/block
        decisions carry them; `explain` or VOICEFW_REASONS=all asks for them on every call.
        """
        n = len(canon)
        order = list(range(n)) if n == 1 else sorted(range(n), key=lambda i: canon[i][2])  # stable: ties keep request order
        ordered_rows = self.store.score_starts([canon[i] for i in order], rate)
        rows: list = [None] * n
        for i, row in zip(order, ordered_rows, strict=True):
            rows[i] = row
        X = np.array(rows, dtype=np.float64)  # FEATURE_NAMES order
        if model.columns is not None:
            X = X[:, model.columns]  # the model's own order
        names = model.feature_names
        probs = model.score(X).tolist()
        decisions = model.decisions(probs)
        explain_all = explain or self.settings.reasons_for == "all"
        wanted = [i for i, d in enumerate(decisions) if explain_all or d != "allow"]
        reasons: dict[int, list[Reason]] = {}
        if wanted:
            contrib = model.contributions(X[wanted])[:, :-1]
            k = self.settings.top_reasons
            for row, i in zip(contrib, wanted, strict=True):
                top = np.argsort(-np.abs(row), kind="stable")[:k]
                reasons[i] = [Reason(names[j], float(X[i, j]), float(row[j])) for j in top if row[j] != 0.0]
        version = model.version
        results = [
            ScoreResult(
                call_id=c[1], operator=c[0], probability=prob, decision=decisions[i],
                model_version=version, reasons=reasons.get(i, []),
                features=dict(zip(names, X[i].tolist())) if include_features else None,
            )
            for i, (c, prob) in enumerate(zip(canon, probs, strict=True))
        ]
        for d in ("allow", "flag", "block"):
            k = decisions.count(d)
            if k:
                self.metrics.count_decision(d, k)
        self.metrics.calls_scored += n
        return results

    def end(self, end: tuple, rate: RateToken | None) -> EndAck:
        observed = self.store.observe_end(end, rate)
        self.metrics.call_ends += 1
        return EndAck(operator=end[0], call_id=end[1], observed=observed)
