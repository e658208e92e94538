"""Model discovery from a real Dagster instance, refusal of bad bundles, hot swap under load.

The service runs as `python -m serving.server` (run_server: uvicorn) in a child process with its
own DAGSTER_HOME; this test process writes materializations into the same SQLite instance.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, DagsterInstance, MaterializeResult, asset, materialize

from serving.registry import wait_for
from serving.synthetic import build_bundle, record_serving_model, synthetic_calls
from serving.testing import REPO, ServerProcess
from tests.postgres import PostgresServer

CALL = {"operator": "operator_b", "call_id": "x", "start_time": "2026-03-03T10:00:00+01:00",
        "a_number": "030 1234567", "b_number": "0151 12000017", "ingress_trunk": "trunk-1"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    calls = synthetic_calls(n_per_day=400)
    models = tmp_path_factory.mktemp("models")
    return [build_bundle(models, calls, seed=s) for s in (1, 2)]


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _server(home: Path, tmp_path: Path, **env: str) -> ServerProcess:
    return ServerProcess({"DAGSTER_HOME": str(home), "VOICEFW_POLL_INTERVAL_S": "0.2", "VOICEFW_RATE_LIMIT": "off",
                          "VOICEFW_API_KEYS": "", **env}, log_path=tmp_path / "server.log")


def _version(url: str) -> str | None:
    r = httpx.get(url + "/healthz", timeout=5)
    return r.json().get("model_version")


def test_discovers_materialization_and_refuses_bad_bundles(bundles, dagster_home, tmp_path) -> None:
    (v1, p1), (v2, p2) = bundles

    @asset(name="serving_model")
    def serving_model() -> MaterializeResult:
        """A stand-in for the real asset: same key, same metadata contract."""
        return MaterializeResult(metadata={"bundle_path": str(p1), "version": v1})

    with DagsterInstance.get() as instance, _server(dagster_home, tmp_path) as srv:
        assert httpx.get(srv.url + "/readyz").status_code == 503  # nothing materialized yet
        assert materialize([serving_model], instance=instance).success
        assert wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 30)
        assert _version(srv.url) == v1
        assert httpx.post(srv.url + "/v1/score", json=CALL).status_code == 200

        # a truncated model file: checksums refuse it before LightGBM ever parses it
        broken = tmp_path / "broken"
        shutil.copytree(p2, broken)
        model_txt = broken / "model.txt"
        model_txt.write_bytes(model_txt.read_bytes()[: model_txt.stat().st_size // 2])
        record_serving_model(instance, broken, v2)
        assert wait_for(lambda: httpx.get(srv.url + "/v1/model").json()["last_refused"] is not None, 30)
        info = httpx.get(srv.url + "/v1/model").json()
        assert info["version"] == v1 and "sha256 mismatch" in info["last_refused"]["reason"]
        assert info["last_refused"]["bundle_path"] == str(broken)
        assert httpx.post(srv.url + "/v1/score", json=CALL).json()["model_version"] == v1

        # an intact bundle announced under another version: refused too
        record_serving_model(instance, p2, "not-the-version")
        assert wait_for(lambda: "not-the-version" in str(httpx.get(srv.url + "/v1/model").json()["last_refused"]), 30)
        assert _version(srv.url) == v1

        # a path that does not exist
        record_serving_model(instance, tmp_path / "nowhere", v2)
        assert wait_for(lambda: "nowhere" in httpx.get(srv.url + "/v1/model").json()["last_refused"]["bundle_path"], 30)
        metrics = httpx.get(srv.url + "/metrics").text
        assert "voicefw_model_refusals_total 3.0" in metrics and "voicefw_model_swaps_total 1.0" in metrics
        assert instance.get_latest_materialization_event(AssetKey("serving_model")) is not None


def test_hot_swap_under_load_drops_nothing(bundles, dagster_home, tmp_path) -> None:
    (v1, p1), (v2, p2) = bundles
    with DagsterInstance.get() as instance, _server(dagster_home, tmp_path) as srv:
        record_serving_model(instance, p1, v1)
        assert wait_for(lambda: _version(srv.url) == v1, 30)
        stop = threading.Event()
        seen: list[str] = []
        failures: list[str] = []

        def load(worker: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=10) as client:
                i = 0
                while not stop.is_set() and i < 20_000:  # bounded
                    i += 1
                    single = dict(CALL, call_id=f"w{worker}-{i}")
                    batch = {"calls": [dict(CALL, call_id=f"w{worker}-{i}-{k}") for k in range(5)]}
                    try:
                        r1 = client.post("/v1/score", json=single)
                        r2 = client.post("/v1/score/batch", json=batch)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    for r in (r1, r2):
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text}")
                    if r1.status_code == 200:
                        seen.append(r1.json()["model_version"])
                    if r2.status_code == 200:
                        body = r2.json()
                        assert {x["model_version"] for x in body["results"]} == {body["model_version"]}

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        record_serving_model(instance, p2, v2)
        swapped = wait_for(lambda: v2 in seen[-20:], 30)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert swapped and not failures, failures[:5]
        assert seen.index(v2) > 0 and seen[0] == v1 and seen[-1] == v2
        assert len(seen) > 50
        info = httpx.get(srv.url + "/v1/model").json()
        assert info["version"] == v2 and info["swaps"] == 2 and info["last_refused"] is None


def test_discovers_model_from_postgres_instance(bundles, dagster_home, tmp_path, postgres_server, postgres_db,
                                                monkeypatch) -> None:
    """The docker configuration: the same dagster.yaml (Postgres storage) for Dagster and the service."""
    (v1, p1), _ = bundles
    shutil.copy(REPO / "docker" / "dagster.yaml", dagster_home / "dagster.yaml")
    pg_env = postgres_server.env(postgres_db)
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.get() as instance, _server(dagster_home, tmp_path, **pg_env) as srv:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        record_serving_model(instance, p1, v1)
        assert wait_for(lambda: _version(srv.url) == v1, 30)
        assert httpx.post(srv.url + "/v1/score", json=CALL).json()["model_version"] == v1


def test_unreadable_instance_is_explained_in_503(tmp_path) -> None:
    """DAGSTER_HOME pointing nowhere: the service runs, stays unready, and says why."""
    with _server(tmp_path / "no_such_home", tmp_path) as srv:
        assert wait_for(lambda: "Dagster instance" in httpx.get(srv.url + "/readyz").json()["detail"]
                        and "cannot read" in httpx.get(srv.url + "/readyz").json()["detail"], 30)
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.post(srv.url + "/v1/score", json=CALL).status_code == 503
