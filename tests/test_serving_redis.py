"""`voicefw serve --workers 2` with the Redis store, as deployed: real uvicorn workers, a real
redis-server, the model found through a Dagster instance, requests over fresh connections."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import pytest
import redis
from dagster import DagsterInstance

from serving.registry import wait_for
from serving.synthetic import DAY2, batch_features, build_bundle, record_serving_model, replay_events, synthetic_calls
from serving.testing import ServerProcess
from tests.redis_server import redis_server  # noqa: F401  (fixture)
from voicefw_assets.features import FEATURE_NAMES
from voicefw_assets.model_bundle import load_bundle, score_matrix

CALL = {"operator": "operator_b", "call_id": "x", "start_time": "2026-03-03T10:00:00+01:00",
        "a_number": "030 1234567", "b_number": "0151 12000017", "ingress_trunk": "trunk-1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    calls = synthetic_calls(n_per_day=600)
    version, path = build_bundle(tmp_path_factory.mktemp("models"), calls, seed=1)
    return calls, version, path


@pytest.fixture
def promoted(world, tmp_path, monkeypatch) -> Path:
    """A Dagster home whose latest serving_model materialization is the world's bundle."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        record_serving_model(instance, world[2], world[1])
    return home


def _server(home: Path, url: str, tmp_path: Path, **env: str) -> ServerProcess:
    return ServerProcess({"DAGSTER_HOME": str(home), "VOICEFW_ONLINE_STORE": url, "VOICEFW_POLL_INTERVAL_S": "0.2",
                          "VOICEFW_RATE_LIMIT": "off", "VOICEFW_API_KEYS": "", **env},
                         workers=2, log_path=tmp_path / f"server-{time.monotonic_ns()}.log")


class _Answer:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self):
        return json.loads(self.content)


def _fresh(method: str, url: str, json_body=None, params: dict | None = None, headers: dict | None = None) -> _Answer:
    """One request on a new TCP connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        body = None if json_body is None else json.dumps(json_body)
        path = parts.path + ("?" + urlencode(params) if params else "")
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return _Answer(r.status, r.read())
    finally:
        conn.close()


def _one_connection_per_worker(url: str) -> list[http.client.HTTPConnection]:
    """Keep-alive connections to two different workers: a burst of concurrent connections reaches
    both (the kernel gives sequential ones to whichever worker is idle, often always the same)."""
    parts = urlsplit(url)

    def open_one(_):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return re.search(r'^voicefw_worker\{pid="(\d+)"\} 1\.0$', text, re.M).group(1), conn

    by_pid: dict[str, http.client.HTTPConnection] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            for pid, conn in pool.map(open_one, range(8)):
                if pid in by_pid:
                    conn.close()
                else:
                    by_pid[pid] = conn
            if len(by_pid) == 2:
                break
    return list(by_pid.values())


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> _Answer:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return _Answer(r.status, r.read())


def _ready(url: str) -> bool:
    """Both workers answer /readyz with 200."""
    conns = _one_connection_per_worker(url)
    ok = len(conns) == 2
    for conn in conns:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        ok = ok and response.status == 200
        conn.close()
    return ok


def _per_worker(url: str, name: str) -> dict[str, float]:
    """`name` as each worker reports it (a scrape reaches one worker: scrape until both answered)."""
    seen: dict[str, float] = {}
    for _ in range(40):
        text = _fresh("GET", url + "/metrics").text
        pid = re.search(r'^voicefw_worker\{pid="(\d+)"\} 1\.0$', text, re.M).group(1)
        seen[pid] = float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
        if len(seen) == 2:
            break
    return seen


def test_two_workers_replay_exactly_survive_a_restart_and_share_the_rate_limit(world, promoted, redis_server,  # noqa: F811
                                                                                 tmp_path) -> None:
    """A held-back day replayed alternately through 2 workers sharing Redis, with the
    service restarted halfway: every call's features and score equal the batch's, the store was
    seeded once, and both workers answered. After the restart the rate limit is on: both workers
    count the client together, and a forged X-Forwarded-For does not make a new client."""
    calls, version, path = world
    expected = batch_features(calls, DAY2).set_index("call_id")
    want = dict(zip(expected.index, score_matrix(load_bundle(path), expected[list(FEATURE_NAMES)].to_numpy(np.float64))))
    events = replay_events(calls, DAY2)
    half = len(events) // 2
    got: dict[str, dict] = {}
    budget = len(events) - half + 10
    for part, limit in ((events[:half], "off"), (events[half:], f"minute:{budget}")):
        # a generous timeout: on a loaded CI machine a slow answer must not turn into a 503 here
        with _server(promoted, redis_server.url, tmp_path, VOICEFW_RATE_LIMIT=limit, VOICEFW_STORE_TIMEOUT_S="5") as srv:
            assert wait_for(lambda: _ready(srv.url), 60)
            workers = _one_connection_per_worker(srv.url)
            assert len(workers) == 2
            for i, (kind, body) in enumerate(part):  # alternate between the two workers
                if kind == "score":
                    r = _post(workers[i % 2], "/v1/score?include_features=true", body)
                    assert r.status_code == 200, r.text
                    got[body["call_id"]] = r.json()
                else:
                    r = _post(workers[i % 2], "/v1/calls/end", body)
                    assert r.status_code == 200 and r.json()["observed"] is True, r.text
            for conn in workers:
                conn.close()
            scored = _per_worker(srv.url, "voicefw_calls_scored_total")
            assert len(scored) == 2 and min(scored.values()) > 0, scored  # both workers served calls
            info = _fresh("GET", srv.url + "/v1/model").json()
            assert info["store"]["kind"] == "redis" and info["store"]["seeded_from"] == version
            if limit != "off":  # the readiness probes above are not counted; /v1/model was: 9 left
                statuses = [_fresh("POST", srv.url + "/v1/score", json_body=dict(CALL, call_id=f"f{i}"),
                                   headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(12)]
                assert statuses == [200] * 9 + [429] * 3, statuses
    assert set(got) == set(expected.index)
    worst = max(abs(got[c]["features"][n] - float(expected.at[c, n])) for c in expected.index for n in FEATURE_NAMES)
    assert worst <= 1e-9
    assert max(abs(got[c]["probability"] - want[c]) for c in want) <= 1e-9
    assert expected["a_range__count_10m"].max() >= 2 and expected["b_number__su_share_24h"].max() > 0
    store = redis.Redis.from_url(redis_server.url)
    assert [int(v) for k in store.keys("voicefw:*:seed_count") for v in [store.get(k)]] == [1]  # 4 processes, 1 seed


def test_redis_killed_under_load_gives_503_then_recovers(promoted, redis_server, tmp_path) -> None:  # noqa: F811
    """Kill -9 Redis while 4 clients score: every request still gets an answer within its timeout,
    200 or 503 naming the store (never a 500 or a hang); /readyz says 503; once Redis is back (empty:
    no persistence) the service seeds it again from the bundle and serves 200."""
    with _server(promoted, redis_server.url, tmp_path) as srv:
        assert wait_for(lambda: _ready(srv.url), 60)
        statuses: list[int] = []
        bodies: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def load(worker: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=5) as client:
                for i in range(3000):  # bounded
                    if stop.is_set():
                        return
                    try:
                        r = client.post("/v1/score", json=dict(CALL, call_id=f"k{worker}-{i}"))
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    statuses.append(r.status_code)
                    if r.status_code != 200:
                        bodies.append(r.text)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for th in threads:
            th.start()
        time.sleep(1.0)
        redis_server.kill()
        time.sleep(2.0)
        assert _fresh("GET", srv.url + "/readyz").status_code == 503
        stop.set()
        for th in threads:
            th.join(30)
        assert not failures, failures[:3]
        assert set(statuses) == {200, 503}, set(statuses)
        assert all("online store unavailable" in b for b in bodies), bodies[:3]
        redis_server.start()  # same port, no data
        assert wait_for(lambda: _fresh("POST", srv.url + "/v1/score", json_body=dict(CALL, call_id="back")).status_code == 200, 60)
        assert wait_for(lambda: _ready(srv.url), 30)
        errors = _per_worker(srv.url, "voicefw_store_errors_total")
        assert sum(errors.values()) > 0
