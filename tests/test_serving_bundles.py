"""A bundle whose model text makes LightGBM abort (checksums recomputed, so they match) is refused by
`voicefw promote` and by the service, which keeps serving, and at start-up serves the newest
promoted bundle that verifies instead, saying so."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from dagster import AssetKey, DagsterInstance

from serving.registry import wait_for
from serving.synthetic import build_bundle, record_serving_model, synthetic_calls
from serving.testing import ServerProcess
from voicefw_assets.bundle_verify import Verdict, verify_in_child
from voicefw_assets.settings import REPO_ROOT

CALL = {"operator": "operator_b", "call_id": "x", "start_time": "2026-03-03T10:00:00+01:00",
        "a_number": "030 1234567", "b_number": "0151 12000017", "ingress_trunk": "trunk-1"}


def malformed_copy(bundle: Path, models_dir: Path) -> tuple[str, Path]:
    """The bundle with a tree whose leaf count contradicts its arrays, and a manifest recomputed to
    match (what a buggy exporter or a careless hand edit produces): LightGBM aborts on it."""
    tmp = models_dir / ".malformed"
    shutil.copytree(bundle, tmp)
    text = (tmp / "model.txt").read_text()
    (tmp / "model.txt").write_text(re.sub(r"num_leaves=\d+", "num_leaves=100000", text, count=1))
    files = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    (tmp / "manifest.json").write_text(json.dumps({"version": version, "files": files}, indent=1, sort_keys=True))
    final = models_dir / version
    tmp.rename(final)
    return version, final


def test_promote_refuses_a_bundle_that_aborts_lightgbm(home) -> None:
    good_version, good = build_bundle(home / "models", synthetic_calls(n_per_day=300), seed=1, rounds=10)
    bad_version, bad = malformed_copy(good, home / "models")
    verdict = verify_in_child(bad)
    assert not verdict.ok and "crashed" in verdict.reason and "Fatal" in verdict.reason, verdict
    out = subprocess.run([sys.executable, "-m", "voicefw_assets.cli", "promote", bad_version], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "refused" in out.stderr and "SIGABRT" in out.stderr, out.stderr
    assert DagsterInstance.get().get_latest_materialization_event(AssetKey("serving_model")) is None
    assert verify_in_child(good) == Verdict(True, good_version, None)


def test_service_walks_back_at_start_and_keeps_serving(home, tmp_path) -> None:
    calls = synthetic_calls(n_per_day=300)
    old_version, old = build_bundle(home / "models", calls, seed=1, rounds=10)
    new_version, new = build_bundle(home / "models", calls, seed=2, rounds=10)
    bad_version, bad = malformed_copy(new, home / "models")
    with DagsterInstance.get() as instance:
        for path, version in ((old, old_version), (bad, bad_version)):
            record_serving_model(instance, path, version)  # the newest promoted bundle is the bad one
        env = {"DAGSTER_HOME": str(Path(instance.root_directory)), "VOICEFW_POLL_INTERVAL_S": "0.2",
               "VOICEFW_RATE_LIMIT": "off", "VOICEFW_API_KEYS": ""}
        with ServerProcess(env, log_path=tmp_path / "server.log") as srv:
            assert wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 60)
            info = httpx.get(srv.url + "/v1/model").json()
            assert info["version"] == old_version
            refused = info["newest_promoted_refused"]
            assert refused["version"] == bad_version and "SIGABRT" in refused["reason"], refused
            assert "voicefw_model_fallback 1.0" in httpx.get(srv.url + "/metrics").text
            assert httpx.post(srv.url + "/v1/score", json=CALL).json()["model_version"] == old_version

            record_serving_model(instance, bad, bad_version)  # promoted again while serving: refused, no crash
            assert wait_for(lambda: httpx.get(srv.url + "/metrics").text.count("voicefw_model_refusals_total 2.0"), 60)
            assert httpx.post(srv.url + "/v1/score", json=CALL).json()["model_version"] == old_version

            record_serving_model(instance, new, new_version)  # an intact newer bundle: swapped in
            assert wait_for(lambda: httpx.get(srv.url + "/v1/model").json()["version"] == new_version, 60)
            assert httpx.get(srv.url + "/v1/model").json()["newest_promoted_refused"] is None
            assert "voicefw_model_fallback 0.0" in httpx.get(srv.url + "/metrics").text
            assert srv.proc.poll() is None  # the same process all along
