"""Rolling back a model by hand: `voicefw promote VERSION` verifies the bundle and records it as served."""

import subprocess
import sys

from dagster import AssetKey, DagsterInstance

from voicefw_assets.settings import REPO_ROOT


def voicefw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicefw_assets.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def served_version() -> str | None:
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("serving_model"))
    return event.asset_materialization.metadata["version"].value if event else None


def test_promote_a_verified_bundle_and_refuse_a_damaged_one(home):
    from serving.synthetic import build_bundle

    old_version, _ = build_bundle(home / "models", seed=1, rounds=10)
    new_version, new_path = build_bundle(home / "models", seed=2, rounds=10)
    assert old_version != new_version

    out = voicefw("promote", new_version)
    assert out.returncode == 0, out.stderr
    assert served_version() == new_version
    out = voicefw("promote", old_version, "--reason", "new model blocks a bank's OTP range")
    assert out.returncode == 0, out.stderr
    assert served_version() == old_version
    listing = voicefw("models").stdout
    assert f"* {old_version}" in listing and f"  {new_version}" in listing

    model = new_path / "model.txt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a truncated model file
    out = voicefw("promote", new_version)
    assert out.returncode == 2 and "refused" in out.stderr
    assert served_version() == old_version  # nothing recorded
