"""Verify a model bundle in a CHILD process before any long-lived process loads it.

LightGBM aborts the whole process (C++ fatal, exit 134) on a malformed model text, even when the
manifest's checksums match. So the scoring service, `voicefw promote` and the serving_model asset
first run `python -m voicefw_assets.bundle_verify <bundle>`: checksums, parse, golden rows, and
reasons (contributions) on them. A crash there is a refusal with the reason (the child's last
stderr lines, e.g. "[LightGBM] [Fatal] Model format error"), never the caller's death.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_MARK = "VOICEFW-VERIFY "


@dataclass(frozen=True)
class Verdict:
    ok: bool
    version: str | None
    reason: str | None  # why it was refused


def verify_in_child(path: Path, timeout_s: float = 300.0) -> Verdict:
    """Load and score the bundle at `path` in a fresh interpreter; never raises for a bad bundle."""
    try:
        proc = subprocess.run([sys.executable, "-m", "voicefw_assets.bundle_verify", str(path)],
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Verdict(False, None, f"verification did not finish within {timeout_s:.0f}s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            answer = json.loads(line[len(_MARK):])
            return Verdict(answer["ok"], answer.get("version"), answer.get("reason"))
    if proc.returncode < 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exit code {proc.returncode}"
    tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
    return Verdict(False, None, f"loading the bundle crashed the verifying process ({how}): {tail or 'no output'}")


def _verify(path: Path) -> str:
    """In the child: everything a server does to a bundle before serving it. Returns the version."""
    import numpy as np

    from voicefw_assets import model_bundle
    from voicefw_assets.model_bundle import feature_row, load_bundle

    bundle = load_bundle(path)  # checksums first, then parse, then the golden rows' scores
    rows = bundle.golden_rows or [{"features": dict.fromkeys(bundle.feature_names, 0.0)}]
    X = np.vstack([feature_row(g["features"], bundle.feature_names) for g in rows])
    contributions = getattr(model_bundle, "contributions", None)
    if contributions is not None:
        contributions(bundle, X)
    else:  # until bundles have kinds: every bundle is LightGBM
        bundle.booster.predict(X, pred_contrib=True, num_threads=1)
    return str(bundle.version)


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    try:
        answer = {"ok": True, "version": _verify(path)}
    except Exception as exc:  # BundleError, LightGBMError, bad JSON: a refusal, reported as such
        answer = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    print(_MARK + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
