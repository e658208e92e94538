"""The scoring API over real HTTP: online features and scores equal the batch ones; safety rules."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.api import create_app
from serving.settings import ServingSettings
from serving.synthetic import DAY2, batch_features, build_bundle, replay_events, synthetic_calls
from serving.testing import ServerThread
from voicefw_assets.features import FEATURE_NAMES
from voicefw_assets.model_bundle import load_bundle, score_matrix

NO_LIMIT = ServingSettings(rate_limit=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    calls = synthetic_calls(n_per_day=1200)
    models = tmp_path_factory.mktemp("models")
    v1, p1 = build_bundle(models, calls, seed=1)
    return calls, p1


def _serve(settings: ServingSettings, bundle_path: Path | None):
    app = create_app(settings, poll=False)
    if bundle_path is not None:
        assert app.service.registry.load(bundle_path) is not None, app.service.registry.last_refused
    return ServerThread(app)


def test_replayed_day_equals_batch_features_and_scores(world) -> None:
    """A held-back day replayed in time order (starts -> /v1/score, ends -> /v1/calls/end) gives
    exactly call_features_select's features and score_matrix's scores."""
    calls, path = world
    bundle = load_bundle(path)
    expected = batch_features(calls, DAY2).set_index("call_id")
    want_scores = dict(zip(expected.index, score_matrix(bundle, expected[list(FEATURE_NAMES)].to_numpy(np.float64))))
    got_features, got_scores, decisions = {}, {}, set()
    with _serve(NO_LIMIT, path) as srv, httpx.Client(base_url=srv.url) as client:
        for kind, body in replay_events(calls, DAY2):
            if kind == "score":
                r = client.post("/v1/score", params={"include_features": "true"}, json=body)
                assert r.status_code == 200, r.text
                res = r.json()
                got_features[res["call_id"]] = res["features"]
                got_scores[res["call_id"]] = res["probability"]
                decisions.add(res["decision"])
                assert res["model_version"] == bundle.version
                assert len(res["reasons"]) <= 3 and all(x["feature"] in FEATURE_NAMES for x in res["reasons"])
                assert bool(res["reasons"]) == (res["decision"] != "allow")  # reasons for flag/block only
            else:
                r = client.post("/v1/calls/end", json=body)
                assert r.status_code == 200, r.text
    assert set(got_features) == set(expected.index) and len(got_features) == 1200
    worst_feature = max(
        abs(got_features[cid][n] - float(expected.at[cid, n])) for cid in expected.index for n in FEATURE_NAMES
    )
    assert worst_feature <= 1e-9
    assert max(abs(got_scores[c] - want_scores[c]) for c in want_scores) <= 1e-9
    assert {"allow", "block"} <= decisions  # the model separates the synthetic flash calls
    # history features were really exercised (not all defaults)
    assert expected["a_range__count_10m"].max() >= 2 and expected["b_number__su_share_24h"].max() > 0


def test_batch_replay_scores_like_single_calls(world) -> None:
    """Runs of consecutive starts sent as batches give the same scores as one call at a time."""
    calls, path = world
    bundle = load_bundle(path)
    expected = batch_features(calls, DAY2).set_index("call_id")
    want = dict(zip(expected.index, score_matrix(bundle, expected[list(FEATURE_NAMES)].to_numpy(np.float64))))
    got = {}
    with _serve(ServingSettings(rate_limit=None, max_batch=40), path) as srv, httpx.Client(base_url=srv.url) as client:
        pending: list[dict] = []

        def flush() -> None:
            if pending:
                r = client.post("/v1/score/batch", json={"calls": pending})
                assert r.status_code == 200, r.text
                body = r.json()
                assert {x["model_version"] for x in body["results"]} == {body["model_version"]}
                got.update({x["call_id"]: x["probability"] for x in body["results"]})
                pending.clear()

        for kind, body in replay_events(calls, DAY2):
            if kind == "score":
                pending.append(body)
                if len(pending) == 40:
                    flush()
            else:
                flush()
                assert client.post("/v1/calls/end", json=body).status_code == 200
        flush()
    assert len(got) == len(want)
    assert max(abs(got[c] - want[c]) for c in want) <= 1e-9


CALL = {"operator": "operator_a", "call_id": "c1", "start_time": "2026-03-03T10:00:00Z",
        "a_number": "020 7946 0001", "b_number": "07700 900001", "ingress_trunk": "trunk-1"}


def test_no_model_is_503_with_a_clear_message() -> None:
    with _serve(NO_LIMIT, None) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
        r = client.post("/v1/score", json=CALL)
        assert r.status_code == 503 and "serving_model" in r.json()["detail"]
        assert client.get("/v1/model").status_code == 503


def test_api_keys_body_limit_and_field_errors(world) -> None:
    _, path = world
    settings = ServingSettings(api_keys=frozenset({"k-one", "k-two"}), max_body_bytes=4000, max_batch=5,
                               rate_limit=None)
    ok = {"Authorization": "Bearer k-two"}
    with _serve(settings, path) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.post("/v1/score", json=CALL).status_code == 401
        assert client.post("/v1/score", json=CALL, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/v1/model").status_code == 401
        assert client.post("/v1/score", json=CALL, headers=ok).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes need no key

        big = {"calls": [dict(CALL, call_id=f"c{i}", ingress_trunk="x" * 200) for i in range(30)]}
        assert client.post("/v1/score/batch", json=big, headers=ok).status_code == 413

        def field_of(payload, path="/v1/score", content=None) -> tuple[int, str]:
            r = client.post(path, json=payload, headers=ok) if content is None else client.post(
                path, content=content, headers={**ok, "content-type": "application/json"})
            return r.status_code, r.json().get("field")

        assert field_of({k: v for k, v in CALL.items() if k != "b_number"}) == (422, "b_number")
        assert field_of(dict(CALL, start_time="2026-03-03T10:00:00")) == (422, "start_time")  # no zone
        assert field_of(dict(CALL, start_time="yesterday")) == (422, "start_time")
        assert field_of(dict(CALL, operator="operator_zz")) == (422, "operator")
        assert field_of(dict(CALL, a_number="12ab")) == (422, "a_number")
        assert field_of(dict(CALL, b_number="anonymous")) == (422, "b_number")
        assert field_of(dict(CALL, call_id=17)) == (422, "call_id")
        bad_batch = {"calls": [CALL, dict(CALL, call_id="c2", b_number="x")]}
        assert field_of(bad_batch, "/v1/score/batch") == (422, "calls[1].b_number")
        assert field_of({"calls": [CALL] * 6}, "/v1/score/batch") == (422, "calls")
        assert field_of({"calls": []}, "/v1/score/batch") == (422, "calls")
        assert field_of({"calls": [{k: v for k, v in CALL.items() if k != "start_time"}]},
                        "/v1/score/batch") == (422, "calls[0].start_time")
        end = {"operator": "operator_a", "call_id": "c1", "end_time": "2026-03-03T10:00:05Z", "answered": "no"}
        assert field_of(end, "/v1/calls/end") == (422, "answered")
        assert field_of(dict(end, answered=False, ring_s=-1), "/v1/calls/end") == (422, "ring_s")
        assert field_of(None, content=b"{not json") == (400, "body")
        r = client.post("/v1/score", json=dict(CALL, call_id="c9"), params={"explain": "true"}, headers=ok)
        assert r.status_code == 200 and len(r.json()["reasons"]) == 3  # explain: reasons even for allow
        top = r.json()["reasons"]
        assert abs(top[0]["contribution"]) >= abs(top[1]["contribution"]) >= abs(top[2]["contribution"])


def test_rate_limit_model_info_metrics_and_schema(world) -> None:
    _, path = world
    with _serve(ServingSettings(rate_limit=("minute", 5)), path) as srv, httpx.Client(base_url=srv.url) as client:
        statuses = [client.post("/v1/score", json=dict(CALL, call_id=f"r{i}")).status_code for i in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        assert client.get("/healthz").status_code == 200  # probes are not rate limited
        info = client.get("/v1/model")
        assert info.status_code == 429  # the limit is per client, every /v1 endpoint
        metrics = client.get("/metrics").text
        assert 'voicefw_requests_total{endpoint="/v1/score",status="200"} 5.0' in metrics
        assert 'voicefw_requests_total{endpoint="/v1/score",status="429"} 2.0' in metrics
        assert "voicefw_request_latency_seconds_bucket" in metrics
        assert "voicefw_model_swaps_total 1.0" in metrics
        assert 'voicefw_model_info{version="' in metrics
        assert "voicefw_decisions_total" in metrics
        schema = client.get("/schema/openapi.json")
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        assert {"/v1/score", "/v1/score/batch", "/v1/calls/end", "/v1/model"} <= set(paths)
        assert "200" in paths["/v1/score"]["post"]["responses"]
    with _serve(NO_LIMIT, path) as srv, httpx.Client(base_url=srv.url) as client:
        info = client.get("/v1/model").json()
        bundle = load_bundle(path)
        assert info["version"] == bundle.version and info["trained_on"] == bundle.trained_on
        assert info["thresholds"] == {"flag": 0.5, "block": 0.9} and info["last_refused"] is None
        assert info["feature_count"] == len(FEATURE_NAMES) and json.dumps(info["metrics"])


def test_registry_refuses_models_it_cannot_serve(world, tmp_path) -> None:
    """Checks that need no server: a model asking for unknown features, a damaged state, a swap that keeps
    the history. Each refusal leaves the current model in place."""
    import lightgbm as lgb

    from serving.synthetic import DAY1, write_state
    from voicefw_assets.model_bundle import write_bundle

    calls, path = world
    app = create_app(NO_LIMIT, poll=False)
    registry = app.service.registry
    good = registry.load(path)
    assert good is not None and registry.current is good
    history = app.service.store.history

    names = list(FEATURE_NAMES) + ["mystery_feature"]
    rng = np.random.default_rng(0)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(rng.random((200, len(names))), rng.integers(0, 2, 200)), num_boost_round=3)
    state = write_state(calls, DAY1, tmp_path / "state")
    _, odd = write_bundle(tmp_path / "models", model_text=booster.model_to_string(), feature_names=names,
                         thresholds={"flag": 0.5, "block": 0.9}, metrics={}, golden_rows=[], trained_on=[],
                         state_files=state)
    assert registry.load(odd) is None
    assert "mystery_feature" in registry.last_refused.reason and registry.current is good

    # a bundle whose state file was damaged after writing: the manifest catches it
    (odd / "state" / next(iter(state))).write_text("garbage")
    assert registry.load(odd) is None and "sha256 mismatch" in registry.last_refused.reason

    # a healthy second model swaps in and the live history object is kept
    _, second = build_bundle(tmp_path / "models2", calls, seed=5)
    assert registry.load(second) is not None and registry.current.bundle.path == second
    assert app.service.store.history is history and registry.swaps == 2
