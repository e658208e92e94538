"""The pure-ASGI scoring path answers exactly as the Litestar handlers do, and hands everything
else to Litestar (over real HTTP)."""

from __future__ import annotations

import re

import httpx
import pytest

from serving.api import create_app
from serving.settings import ServingSettings
from serving.synthetic import build_bundle, synthetic_calls
from serving.testing import ServerThread

CALLS = [{"operator": "operator_a", "call_id": f"c{i}", "start_time": f"2026-03-03T10:00:{i:02d}Z",
          "a_number": f"020 7946 {i % 3:04d}", "b_number": "07700 900001", "ingress_trunk": " trunk-1 "}
         for i in range(12)]


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("models"), synthetic_calls(n_per_day=300), seed=3)[1]


def _serve(path, settings=ServingSettings(rate_limit=None)):
    app = create_app(settings, poll=False)
    assert app.service.registry.load(path) is not None
    return ServerThread(app)


def test_fast_path_answers_byte_for_byte_like_litestar(bundle_path) -> None:
    """The same calls into two fresh services: without query parameters (fast path) and with
    `?explain=false` (Litestar's handler, same meaning). Bodies and content types are identical."""
    answers = []
    for query in ({}, {"explain": "false"}):
        with _serve(bundle_path) as srv, httpx.Client(base_url=srv.url) as client:
            got = [client.post("/v1/score", json=c, params=query) for c in CALLS[:6]]
            got.append(client.post("/v1/calls/end", params=query, json={
                "operator": "operator_a", "call_id": "c0", "end_time": "2026-03-03T10:00:03Z", "answered": False,
                "start_time": "2026-03-03T10:00:00Z"}))  # a short unanswered call: the batch below sees its end
            got.append(client.post("/v1/score/batch", json={"calls": CALLS[6:]}, params=query))
            assert all(r.status_code == 200 for r in got), [r.text for r in got]
            answers.append([(r.headers["content-type"], r.content) for r in got])
            metrics = client.get("/metrics").text
            assert re.search(r"^voicefw_calls_scored_total 12\.0$", metrics, re.M)
            assert 'voicefw_requests_total{endpoint="/v1/score",status="200"} 6.0' in metrics
            assert re.search(r"^voicefw_call_ends_total 1\.0$", metrics, re.M)
    assert answers[0] == answers[1]
    assert b'"call_id":"c1"' in answers[0][1][1] and b'"features":null' in answers[0][1][1]
    assert answers[0][6][1] == b'{"operator":"operator_a","call_id":"c0","observed":true}'


def test_refusals_are_the_same_through_both_paths(bundle_path) -> None:
    """Every refusal, plain (the ASGI shortcut) and with `?explain=false` (Litestar's handler), has the
    same status and the same bytes; 401 and 413 are not counted against the rate limit, other
    refusals are, and the limit's 429 comes before a field error."""
    settings = ServingSettings(api_keys=frozenset({"k"}), rate_limit=("minute", 9), max_batch=3, max_body_bytes=3000)
    ok = {"Authorization": "Bearer k"}
    end = {"operator": "operator_a", "call_id": "c0", "end_time": "2026-03-03T10:00:05Z", "answered": "no"}
    cases = [
        ("/v1/score", {"json": CALLS[0]}, 401, None),
        ("/v1/score", {"json": CALLS[0], "headers": {"Authorization": "Bearer nope"}}, 401, None),
        ("/v1/score/batch", {"json": {"calls": [dict(CALLS[0], ingress_trunk="x" * 3000)]}, "headers": ok}, 413, "body"),
        ("/v1/score", {"json": dict(CALLS[0], b_number="x"), "headers": ok}, 422, "b_number"),
        ("/v1/score/batch", {"json": {"calls": CALLS[:4]}, "headers": ok}, 422, "calls"),
        ("/v1/calls/end", {"json": end, "headers": ok}, 422, "answered"),
        ("/v1/score", {"content": b'{"operator": ', "headers": {**ok, "content-type": "application/json"}}, 400, "body"),
    ]
    answers = []
    for query in ({}, {"explain": "false"}):
        with _serve(bundle_path, settings) as srv, httpx.Client(base_url=srv.url) as client:
            got = []
            for path, kwargs, status, field in cases:
                r = client.post(path, params=query, **kwargs)
                assert r.status_code == status and r.json()["field"] == field, (path, r.status_code, r.text)
                assert r.json()["errors"] or status == 401
                got.append(r.content)
            assert b"the limit is 3000 bytes" in got[2]
            # 4 counted refusals above + 5 accepted = 9: the 10th request is over the limit
            assert [client.post("/v1/score", json=dict(CALLS[1], call_id=f"q{i}"), params=query, headers=ok).status_code
                    for i in range(6)] == [200] * 5 + [429]
            r = client.post("/v1/score", json=dict(CALLS[0], b_number="x"), params=query, headers=ok)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            answers.append(got)
    assert answers[0] == answers[1]
