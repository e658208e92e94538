"""Every test gets its own VOICEFW_HOME and DAGSTER_HOME: real files, nothing shared."""

import pytest

pytest_plugins = ["tests.postgres"]  # postgres_server / postgres_db: a throwaway PostgreSQL for the dagster-postgres tests


@pytest.fixture
def home(tmp_path, monkeypatch):
    vf = tmp_path / "voicefw"
    dh = tmp_path / "dagster_home"
    vf.mkdir()
    dh.mkdir()
    (dh / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("VOICEFW_HOME", str(vf))
    monkeypatch.setenv("DAGSTER_HOME", str(dh))
    monkeypatch.setenv("VOICEFW_SETTLE_S", "0")  # files written by a test are complete: read them at once
    return vf
