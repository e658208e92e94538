"""The online history behind one interface: in this process (`memory`) or shared (`redis://`).

`VOICEFW_ONLINE_STORE=memory` (the default) keeps `OnlineHistory` in the worker, so it needs exactly
one worker; `redis://host:port/db` keeps it in Redis (serving/redis_store.py), shared by every
worker and replica and kept across restarts. Both give a call's feature row from strictly earlier
calls and record the call in the same step, take the rate-limit token of the request in that step
(one round trip to Redis), and seed themselves from a bundle's state only when empty.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from time import time
from typing import Protocol

from serving.schemas import StoreInfo
from voicefw_assets.online_features import OnlineHistory

# A call as the history sees it: (operator, call_id, UTC start, E.164 A or None, E.164 B, trunk or None)
Start = tuple[str, str, datetime, str | None, str, str | None]
# A call end: (operator, call_id, UTC end, answered, ring_s or None)
End = tuple[str, str, datetime, bool, float | None]

WINDOW_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
FREEZE_EVERY = 5000  # calls recorded between two gc.freeze() of the in-process history


class StoreUnavailable(Exception):
    """The shared store cannot answer (down, timed out, being seeded): the request changes nothing."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class RateLimited(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RateToken:
    """One request of `client` against `limit` requests per fixed window of `window_s` seconds."""

    client: str
    limit: int
    window_s: int


class HistoryStore(Protocol):
    kind: str

    def prepare(self, state_dir: Path, version: str) -> None:
        """Before the first model serves: seed an EMPTY store from the bundle's state (once, even
        when several workers race); a store that already holds history is kept as it is."""

    def ready(self) -> bool: ...

    def reseed(self) -> None:
        """Seed again from the bundle `prepare` was given (the shared store lost its data)."""

    def score_starts(self, calls: list[Start], rate: RateToken | None) -> list[list]:
        """Feature rows (FEATURE_NAMES order) in the given order, each from strictly earlier calls
        (earlier ones of this list included), recording every call. RateLimited: nothing recorded."""

    def observe_end(self, end: End, rate: RateToken | None) -> bool:
        """Record an end; False when no start of that call is held (never scored, ended, too old)."""

    def take(self, rate: RateToken) -> None:
        """Count one request (RateLimited when over the limit; then not counted)."""

    def health(self) -> str | None:
        """None when usable, else why not (for /readyz)."""

    def info(self) -> StoreInfo: ...

    def close(self) -> None: ...


class FixedWindows:
    """In-process fixed-window counters per client (one worker: the memory store's rate limit)."""

    def __init__(self) -> None:
        self.windows: dict[str, tuple[int, int]] = {}  # client -> (window end, requests in it)

    def take(self, rate: RateToken) -> None:
        windows, now = self.windows, int(time())
        reset, count = windows.get(rate.client, (0, 0))
        if reset <= now:
            if len(windows) > 10_000:  # bounded memory under many clients
                for k in [k for k, v in windows.items() if v[0] <= now]:
                    del windows[k]
            reset, count = now - now % rate.window_s + rate.window_s, 0
        if count >= rate.limit:
            raise RateLimited(max(reset - now, 1))
        windows[rate.client] = (reset, count + 1)


class MemoryHistoryStore:
    """`OnlineHistory` in this process, built from the first bundle's state and then kept.

    Mutated only on the event loop (handlers are async, nothing runs in a thread pool), so it
    needs no lock; exact only with ONE worker (serving/server.py refuses more).
    """

    kind = "memory"

    def __init__(self) -> None:
        self.history: OnlineHistory | None = None
        self.limits = FixedWindows()
        self.seeded_from: str | None = None
        self.seeded_at: str | None = None
        self.freeze_gc = False  # set while serving, so library use and tests leave gc alone
        self._unfrozen = 0

    def prepare(self, state_dir: Path, version: str) -> None:
        if self.history is None:
            self.history = OnlineHistory.from_bundle_state(state_dir)
            self.seeded_from, self.seeded_at = version, datetime.now().astimezone().isoformat()
            self.freeze()

    def ready(self) -> bool:
        return self.history is not None

    def reseed(self) -> None:
        """Nothing to do: the in-process history cannot lose its data while the process lives."""

    def freeze(self) -> None:
        """Keep the garbage collector's full passes off the request path.

        The history is hundreds of thousands of long-lived lists and dicts; a full collection walks
        all of them (measured: 380 ms pauses at 250 k entries). Every FREEZE_EVERY calls, collect the
        young generations (cheap) and move the survivors to the permanent generation, which the
        collector never walks. The history holds no reference cycles; it frees by refcount.
        """
        self._unfrozen = 0
        if self.freeze_gc:
            gc.collect(1)
            gc.freeze()

    def score_starts(self, calls: list[Start], rate: RateToken | None) -> list[list]:
        if rate is not None:
            self.limits.take(rate)
        score_start = self.history.score_start
        rows = [score_start(*c) for c in calls]
        self._unfrozen += len(calls)
        if self._unfrozen >= FREEZE_EVERY:
            self.freeze()
        return rows

    def observe_end(self, end: End, rate: RateToken | None) -> bool:
        if rate is not None:
            self.limits.take(rate)
        operator, call_id, end_time, answered, ring_s = end
        return self.history.observe_end(
            {"operator": operator, "call_id": call_id, "end_time": end_time, "answered": answered, "ring_s": ring_s})

    def take(self, rate: RateToken) -> None:
        self.limits.take(rate)

    def health(self) -> str | None:
        return None if self.history is not None else "the online history is not built yet"

    def info(self) -> StoreInfo:
        return StoreInfo("memory", None, self.seeded_from, self.seeded_at)

    def close(self) -> None:
        if self.freeze_gc:
            self.freeze_gc = False
            gc.unfreeze()  # let interpreter shutdown free everything normally


def open_store(url: str, timeout_s: float = 0.5) -> HistoryStore:
    """`memory` or `redis://host:port/db` (VOICEFW_ONLINE_STORE)."""
    if url == "memory":
        return MemoryHistoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from serving.redis_store import RedisHistoryStore

        return RedisHistoryStore(url, timeout_s=timeout_s)
    raise ValueError(f"VOICEFW_ONLINE_STORE={url!r}: expected 'memory' or 'redis://host:port/db'")
