"""Versioned model bundles: write (atomically), verify (checksums first), load (golden rows).

A bundle is a directory $VOICEFW_HOME/models/<version>/:
  model.txt           LightGBM model text
  features.json       the ordered feature names (the model's input spec)
  thresholds.json     decision thresholds {"flag": .., "block": ..}
  metrics.json        evaluation metrics of candidate and baselines
  golden_rows.json    a few feature rows with the scores they must reproduce
  meta.json           partitions trained on
  state/              what the online service needs for history features (online_features.py)
  manifest.json       sha256 of every other file; the version is derived from it (content hash)

Batch scoring and the service both score through `feature_row` + `score_matrix`, so their
scores agree to 1e-9.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

MANIFEST = "manifest.json"
GOLDEN_TOLERANCE = 1e-9


class BundleError(Exception):
    """A bundle that must not be served; the message names the bad file."""


@dataclass
class Bundle:
    version: str
    path: Path
    feature_names: list[str]
    booster: lgb.Booster
    metrics: dict
    thresholds: dict  # {"flag": float, "block": float}
    golden_rows: list[dict]  # [{"features": {name: value}, "score": float}]
    trained_on: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.path / "state"


def decision(score: float, thresholds: dict) -> str:
    if score >= thresholds["block"]:
        return "block"
    if score >= thresholds["flag"]:
        return "flag"
    return "allow"


def feature_row(features: dict[str, float], feature_names: list[str]) -> np.ndarray:
    """The ONE conversion of a feature dict into the model's ordered float64 row (1 x n)."""
    try:
        return np.array([[float(features[n]) for n in feature_names]], dtype=np.float64)
    except KeyError as exc:
        raise KeyError(f"feature {exc.args[0]!r} missing from the feature dict") from None


def score_matrix(bundle: Bundle, X: np.ndarray) -> np.ndarray:
    """Scores of rows X (n x features, float64, in bundle.feature_names order). Single-threaded so
    batch and service results are identical (and tail latency is steady)."""
    return np.asarray(bundle.booster.predict(np.asarray(X, dtype=np.float64), num_threads=1), dtype=np.float64)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_bundle(
    models_dir: Path,
    *,
    model_text: str,
    feature_names: list[str],
    thresholds: dict,
    metrics: dict,
    golden_rows: list[dict],
    trained_on: list[str],
    state_files: dict[str, Path],
) -> tuple[str, Path]:
    """Write a bundle atomically (temp dir, fsync, rename) and return (version, path).
    The version is a hash of the content, so the same model + state gives the same version."""
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        (tmp / "model.txt").write_text(model_text)
        (tmp / "features.json").write_text(json.dumps({"feature_names": list(feature_names)}, indent=1))
        (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=1, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        (tmp / "golden_rows.json").write_text(json.dumps(golden_rows, indent=1))
        (tmp / "meta.json").write_text(json.dumps({"trained_on": list(trained_on)}, indent=1))
        (tmp / "state").mkdir()
        for name, src in state_files.items():
            shutil.copyfile(src, tmp / "state" / name)
        files = {rel: _sha256(tmp / rel) for rel in _files(tmp)}
        version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        (tmp / MANIFEST).write_text(json.dumps({"version": version, "files": files}, indent=1, sort_keys=True))
        for p in tmp.rglob("*"):
            if p.is_file():
                with p.open("rb") as fh:
                    os.fsync(fh.fileno())
        for d in [tmp / "state", tmp]:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        final = models_dir / version
        if final.exists():  # same content already promoted: keep it (verify it is intact)
            shutil.rmtree(tmp)
            verify_bundle(final)
            return version, final
        os.rename(tmp, final)
        fd = os.open(models_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return version, final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_bundle(path: Path) -> None:
    """Check manifest.json against every file BEFORE anything is parsed (a truncated LightGBM
    model file segfaults the loading process). Raises BundleError naming the bad file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    present = set(_files(path))
    for extra in sorted(present - set(files)):
        raise BundleError(f"{path / extra}: not listed in the manifest")
    for rel, digest in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise BundleError(f"{f}: missing")
        if _sha256(f) != digest:
            raise BundleError(f"{f}: sha256 mismatch (corrupt or truncated)")
    version = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    if manifest.get("version") != version:
        raise BundleError(f"{manifest_path}: version {manifest.get('version')!r} does not match its content ({version})")


def load_bundle(path: Path) -> Bundle:
    """verify_bundle, load the booster, and check the golden rows reproduce their scores."""
    path = Path(path)
    verify_bundle(path)
    manifest = json.loads((path / MANIFEST).read_text())
    try:
        booster = lgb.Booster(model_file=str(path / "model.txt"))
        bundle = Bundle(
            version=manifest["version"],
            path=path,
            feature_names=json.loads((path / "features.json").read_text())["feature_names"],
            booster=booster,
            metrics=json.loads((path / "metrics.json").read_text()),
            thresholds=json.loads((path / "thresholds.json").read_text()),
            golden_rows=json.loads((path / "golden_rows.json").read_text()),
            trained_on=json.loads((path / "meta.json").read_text())["trained_on"],
        )
    except (OSError, ValueError, KeyError, lgb.basic.LightGBMError) as exc:
        raise BundleError(f"{path}: cannot load ({exc})") from None
    if booster.num_feature() != len(bundle.feature_names):
        raise BundleError(f"{path / 'features.json'}: {len(bundle.feature_names)} features, model expects {booster.num_feature()}")
    if bundle.golden_rows:
        X = np.vstack([feature_row(g["features"], bundle.feature_names) for g in bundle.golden_rows])
        got = score_matrix(bundle, X)
        want = np.array([g["score"] for g in bundle.golden_rows])
        bad = np.flatnonzero(np.abs(got - want) > GOLDEN_TOLERANCE)
        if bad.size:
            raise BundleError(f"{path / 'golden_rows.json'}: row {int(bad[0])} scores {got[bad[0]]!r}, expected {want[bad[0]]!r}")
    return bundle
