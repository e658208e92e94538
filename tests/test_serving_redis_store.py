"""The Redis history store against the in-process one and the batch SQL, on a real redis-server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from serving.history_store import MemoryHistoryStore, RateLimited, RateToken
from serving.redis_store import PLAN, RedisHistoryStore
from serving.synthetic import DAY1, DAY2, batch_features, synthetic_calls, write_state
from tests.redis_server import redis_server  # noqa: F401  (fixture)
from voicefw_assets.features import FEATURE_NAMES, HISTORY_FEATURES, KEYS


@pytest.fixture(scope="module")
def calls():
    return synthetic_calls(n_per_day=1500)


def _events(calls, day, jitter: bool):
    """The day's starts and ends in time order; with `jitter`, starts arrive up to 30 s late in
    shuffled groups (late calls and ties take the store's exact slow path)."""
    f = calls.frame[calls.frame["partition_date"] == day]
    ev = []
    for r in f.itertuples(index=False):
        start = (r.operator, r.call_id, r.start_time.to_pydatetime(), r.a_number, r.b_number, r.ingress_trunk)
        ev.append((r.start_time, 1, "start", start))
        ev.append((r.end_time, 0, "end", (r.operator, r.call_id, r.end_time.to_pydatetime(), bool(r.answered), float(r.ring_s))))
    ev.sort(key=lambda e: (e[0], e[1]))
    if jitter:
        rng = np.random.default_rng(3)
        ev = [(e[0] + timedelta(seconds=float(rng.uniform(0, 30))) if e[2] == "start" else e[0], *e[1:]) for e in ev]
        ev.sort(key=lambda e: (e[0], e[1]))
    return [(kind, body) for _, _, kind, body in ev]


@pytest.mark.parametrize("jitter", [False, True])
def test_redis_store_equals_memory_store_and_batch(calls, redis_server, tmp_path, jitter) -> None:  # noqa: F811
    state = tmp_path / "state"
    write_state(calls, DAY1, state)
    memory, shared = MemoryHistoryStore(), RedisHistoryStore(redis_server.url)
    memory.prepare(state, "v1")
    shared.prepare(state, "v1")
    got: dict[str, list] = {}
    ended = []
    for kind, body in _events(calls, DAY2, jitter):
        if kind == "start":
            want, row = memory.score_starts([body], None)[0], shared.score_starts([body], None)[0]
            assert [float(x) for x in row] == [float(x) for x in want], body
            got[body[1]] = row
        else:
            observed = shared.observe_end(body, None)
            assert observed == memory.observe_end(body, None)  # with jitter some ends beat their start
            ended.append((body, observed))
    assert len(got) == 1500 and all(o for _, o in ended) == (not jitter)
    if not jitter:  # in time order the online rows are exactly the batch SQL's
        expected = batch_features(calls, DAY2).set_index("call_id")
        assert max(abs(got[c][i] - float(expected.at[c, n])) for c in expected.index
                   for i, n in enumerate(FEATURE_NAMES)) == 0.0
        assert expected["a_range__distinct_a_10m"].max() >= 2  # distinct counts were exercised
    # an end nobody started, and an end reported twice, are not observed (and change nothing)
    assert shared.observe_end(("operator_a", "never-scored", datetime(2026, 3, 3, 12, tzinfo=UTC), False, 1.0), None) is False
    twice = next(body for body, observed in ended if observed)
    assert shared.observe_end(twice, None) is False and memory.observe_end(twice, None) is False


def test_retry_counts_once_batch_order_and_rate_limit(calls, redis_server, tmp_path) -> None:  # noqa: F811
    state = tmp_path / "state"
    write_state(calls, DAY1, state)
    store = RedisHistoryStore(redis_server.url)
    store.prepare(state, "v1")
    t = datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC)
    a, b = "+447700900123", "+447700900999"
    first = [("operator_a", f"r{i}", t + timedelta(seconds=i), a, b, "t1") for i in range(3)]
    rows = store.score_starts(first, None)
    col = FEATURE_NAMES.index("a_number__count_24h")
    assert [r[col] for r in rows] == [0, 1, 2]  # a batch in order: each call sees the earlier ones
    again = store.score_starts(first, None)  # the client retries after a timeout: same members
    assert [r[col] for r in again] == [0, 1, 2]
    probe = store.score_starts([("operator_a", "r9", t + timedelta(minutes=5), a, b, "t1")], None)[0]
    assert probe[col] == 3
    rate = RateToken("ip:10.0.0.1", 3, 60)
    store.take(rate)
    store.take(rate)
    store.score_starts([("operator_a", "r10", t + timedelta(minutes=6), a, b, "t1")], rate)
    with pytest.raises(RateLimited):
        store.score_starts([("operator_a", "r11", t + timedelta(minutes=7), a, b, "t1")], rate)
    after = store.score_starts([("operator_a", "r12", t + timedelta(minutes=8), a, b, "t1")], None)[0]
    assert after[col] == 5  # r11 was refused before anything was recorded
    store.take(RateToken("ip:10.0.0.2", 3, 60))  # another client has its own counter


def test_memory_is_bounded_by_each_keys_own_window(redis_server, tmp_path) -> None:  # noqa: F811
    """A busy trunk keeps about its largest window of starts; an A-number that stops calling is swept
    once its own horizon passes; calls never ended are forgotten after the largest window."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "history.csv").write_text(
        "operator,call_id,start_us,end_us,a_number,b_number,ingress_trunk,answered,ring_s\n")
    (state / "online_state.json").write_text('{"timezones": {}, "cut": "2026-03-02"}')
    store = RedisHistoryStore(redis_server.url)
    store.prepare(state, "empty")
    client, prefix = store.client, store.prefix
    horizon = {p["tag"]: p["horizon"] for p in PLAN if p}
    for k in KEYS:  # each key keeps its own largest window (+ 60 s for late calls), nothing more
        largest = max(f.window_s for f in HISTORY_FEATURES if f.key == k)
        assert horizon[str(KEYS.index(k))] == (largest + 60) * 1_000_000, k
    t0 = datetime(2026, 3, 3, tzinfo=UTC)
    lonely = prefix.encode() + str(KEYS.index("a_number")).encode() + b"\0+441234567890\0s"
    lonely_window = max(f.window_s for f in HISTORY_FEATURES if f.key == "a_number")
    store.score_starts([("operator_a", "lonely", t0, "+441234567890", "+447700900001", None)], None)
    store.score_starts([("operator_a", "before", t0 + timedelta(seconds=lonely_window - 600), None, "+447700900002", "t9")], None)
    assert client.exists(lonely)  # its horizon has not passed yet
    store.score_starts([("operator_a", "after", t0 + timedelta(seconds=lonely_window + 180), None, "+447700900002", "t9")], None)
    assert not client.exists(lonely)  # swept: nobody needs it any more
    trunk_window = max(f.window_s for f in HISTORY_FEATURES if f.key == "ingress_trunk")
    t1 = t0 + timedelta(days=2)
    step = timedelta(seconds=60)
    n = int(2.5 * trunk_window / step.total_seconds())  # two and a half trunk windows of traffic
    for i in range(0, n, 400):
        store.score_starts([("operator_a", f"c{j}", t1 + (j + 1) * step, f"+4420794{j % 50:05d}", "+447700900002", "busy")
                            for j in range(i, min(n, i + 400))], None)
    trunk_key = prefix.encode() + str(KEYS.index("ingress_trunk")).encode() + b"\0busy\0s"
    kept = client.zcard(trunk_key)
    per_window = trunk_window / step.total_seconds()
    assert per_window <= kept <= per_window + 120 / step.total_seconds() + 1, kept  # + late slack + trim batch
    assert client.hlen(prefix + "open") < n  # calls never ended older than the largest window: forgotten
    # a range calling every 10 minutes for 26 h keeps 24 h (+60 s) of starts, in its per-number indexes too
    a_range_tag = str(KEYS.index("a_range")).encode()
    t2 = t1 + (n + 1) * step
    for i in range(26 * 6):
        store.score_starts([("operator_a", f"r{i}", t2 + timedelta(minutes=3 + 10 * i), f"+44207999{i % 7:04d}",
                             f"+4477009{i % 5:05d}", None)], None)
    base = prefix.encode() + a_range_tag + b"\0+44207999\0"
    kept = [client.zcard(base + suffix) for suffix in (b"s", b"xa", b"xb")]
    assert kept == [24 * 6 + 1] * 3, kept


def test_two_processes_racing_seed_once(calls, redis_server, tmp_path) -> None:  # noqa: F811
    state = tmp_path / "state"
    write_state(calls, DAY1, state)
    stores = [RedisHistoryStore(redis_server.url) for _ in range(3)]
    threads = [threading.Thread(target=s.prepare, args=(state, "v1")) for s in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert all(s.ready() for s in stores)
    assert int(stores[0].client.get(stores[0].prefix + "seed_count")) == 1
    again = RedisHistoryStore(redis_server.url)  # a restart: the store holds history, nothing is seeded
    again.prepare(state, "v2")
    assert int(again.client.get(again.prefix + "seed_count")) == 1 and again.info().seeded_from == "v1"
