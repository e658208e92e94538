"""Admission over real HTTP (one worker, in-process history): odd inputs are 4xx naming the field
and change nothing; a batch is all or nothing; the rate limit counts API keys, not forged headers."""

from __future__ import annotations

import httpx
import pytest

from serving.api import create_app
from serving.settings import ServingSettings
from serving.synthetic import build_bundle, synthetic_calls
from serving.testing import ServerThread
from voicefw_assets.operators import operator_configs

CALL = {"operator": "operator_a", "call_id": "c1", "start_time": "2026-03-03T10:00:00Z",
        "a_number": "020 7946 0001", "b_number": "07700 900001", "ingress_trunk": "trunk-1"}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("models"), synthetic_calls(n_per_day=300), seed=3)[1]


def _serve(path, **settings):
    app = create_app(ServingSettings(**{"rate_limit": None, **settings}), poll=False)
    assert app.service.registry.load(path) is not None, app.service.registry.last_refused
    return ServerThread(app)


def _count(client: httpx.Client, a_number: str, at: str) -> float:
    """How many earlier calls of this A-number in the last hour the service holds (a probe call)."""
    r = client.post("/v1/score", params={"include_features": "true"},
                    json=dict(CALL, call_id=f"probe-{at}", a_number=a_number, start_time=at))
    assert r.status_code == 200, r.text
    return r.json()["features"]["a_number__count_24h"]


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
def test_odd_inputs_are_4xx_naming_the_field_and_a_batch_is_all_or_nothing(bundle_path, path) -> None:
    batch = path.endswith("batch")
    odd = [
        ({"start_time": "0001-01-01T00:00:00Z"}, "start_time"),
        ({"start_time": "9999-12-31T23:59:59-14:00"}, "start_time"),
        ({"start_time": "1969-12-31T23:59:59Z"}, "start_time"),
        ({"start_time": 12345}, "start_time"),
        ({"start_time": "2026-03-03T10:00:00"}, "start_time"),  # no zone
        ({"start_time": "2026-02-30T10:00:00Z"}, "start_time"),
        ({"call_id": "a\u0000b"}, "call_id"),
        ({"ingress_trunk": "t\u0000"}, "ingress_trunk"),
        ({"a_number": "0207946\u00000001"}, "a_number"),
        ({"operator": "operator_zz"}, "operator"),
        ({"call_id": 17}, "call_id"),
    ]
    with _serve(bundle_path) as srv, httpx.Client(base_url=srv.url) as client:
        for k, (change, field) in enumerate(odd):
            good = [dict(CALL, call_id=f"g{k}-{i}", a_number="020 7946 5555",
                         start_time=f"2026-03-03T10:0{i}:00Z") for i in range(3)]
            bad = {**CALL, "call_id": f"b{k}", "a_number": "020 7946 5555", **change}
            body = {"calls": [*good, bad]} if batch else bad
            r = client.post(path, json=body)
            want = f"calls[3].{field}" if batch else field
            assert (r.status_code, r.json()["field"]) == (422, want), (change, r.text)
            assert r.json()["errors"][0]["field"] == want
        # nothing of the refused requests was recorded: the good calls of every batch included
        assert _count(client, "020 7946 5555", "2026-03-03T10:30:00Z") == 0
        r = client.post(path, json={"calls": [dict(CALL, call_id="late", start_time="2099-12-31T23:59:59-14:00")]}
                        if batch else dict(CALL, call_id="late", start_time="2099-12-31T23:59:59-14:00"))
        assert r.status_code == 200, r.text  # the last accepted instant (2100-01-01T13:59:59Z) is fine
        end = {"operator": "operator_a", "call_id": "never-scored", "end_time": "2026-03-03T10:00:05Z", "answered": False}
        assert client.post("/v1/calls/end", json=end).json()["observed"] is False
        r = client.post("/v1/calls/end", json=dict(end, end_time="0001-01-01T00:00:00Z"))
        assert (r.status_code, r.json()["field"]) == (422, "end_time")


def test_rate_limit_counts_keys_not_forwarded_for_headers(bundle_path) -> None:
    """Without trusted proxies a rotating X-Forwarded-For is ignored (uvicorn's own default would
    trust it from 127.0.0.1); with keys, each key has its own budget whatever the address."""
    with _serve(bundle_path, rate_limit=("minute", 4)) as srv, httpx.Client(base_url=srv.url) as client:
        got = [client.post("/v1/score", json=dict(CALL, call_id=f"x{i}"),
                           headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(6)]
        assert got == [200] * 4 + [429] * 2
    with _serve(bundle_path, rate_limit=("minute", 3), api_keys=frozenset({"k1", "k2"})) as srv, \
            httpx.Client(base_url=srv.url) as client:
        for key in ("k1", "k2"):
            got = [client.post("/v1/score", json=dict(CALL, call_id=f"{key}-{i}"),
                               headers={"Authorization": f"Bearer {key}"}).status_code for i in range(4)]
            assert got == [200] * 3 + [429], (key, got)
        assert client.post("/v1/score", json=CALL).status_code == 401  # no key: refused, not counted
        assert client.get("/v1/model", headers={"Authorization": "Bearer k1"}).status_code == 429


def test_openapi_lists_every_status_and_the_operators(bundle_path) -> None:
    with _serve(bundle_path, api_keys=frozenset({"k"})) as srv, httpx.Client(base_url=srv.url) as client:
        spec = client.get("/schema/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/score", "/v1/score/batch", "/v1/calls/end"):
        op = paths[path]["post"]
        assert set(op["responses"]) == {"200", "400", "401", "413", "422", "429", "503"}, (path, op["responses"])
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")
        assert op["security"] == [{"bearer": []}]
    assert set(paths["/v1/model"]["get"]["responses"]) == {"200", "401", "429", "503"}
    schemas = spec["components"]["schemas"]
    operators = sorted(operator_configs())
    assert sorted(schemas["CallSetup"]["discriminator"]["mapping"]) == operators  # one body per operator
    assert schemas["CallEnd"]["properties"]["operator"]["enum"] == operators
    setup_a = schemas["CallSetup_operator_a"]["properties"]
    assert "pattern" in setup_a["start_time"] and "pattern" in setup_a["b_number"]
