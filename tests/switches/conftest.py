"""One real Kamailio + SIPp run per test session, shared by the output and the mapping tests."""

from __future__ import annotations

import shutil

import pytest

from tests.switches.sample import place_sample


@pytest.fixture(scope="session")
def switch_run(tmp_path_factory):
    """(SwitchRun, {call_id: Expected}) of the sample plan placed through a fresh Kamailio."""
    if not (shutil.which("kamailio") and shutil.which("sipp")):
        pytest.fail("kamailio/sipp missing: run `bash .ci/switches.sh install` (make test does)")
    run, rows = place_sample(tmp_path_factory.mktemp("kamailio"))
    return run, {e.call_id: e for e in rows}
