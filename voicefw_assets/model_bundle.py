"""Versioned model bundles: write (atomically), verify (checksums first), load (golden rows), and
score -- the ONE home of how every kind of model turns a feature matrix into scores and reasons.

Kinds (`Bundle.kind`; a bundle without one is LightGBM, as every bundle before kinds existed):
  lightgbm  model.txt: LightGBM model text (`bundle.booster`)
  linear    model.json: logistic regression over signed-log1p, standardized inputs
  rules     model.json: velocity rules (indicator conditions on history features) combined by a
            fitted logistic scorecard -- the documented fallback served while no ML candidate passed
`score_matrix` and `contributions` dispatch on the kind, so batch scoring, the service and the
gates all score a bundle the same way.

A bundle is a directory $VOICEFW_HOME/models/<version>/:
  model.txt | model.json   the model (see kinds)
  features.json       the ordered feature names (the model's input spec)
  thresholds.json     decision thresholds {"flag": .., "block": ..}
  metrics.json        evaluation metrics of candidate and baselines
  golden_rows.json    a few feature rows with the scores they must reproduce
  meta.json           kind, partitions trained on, why this candidate
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
KINDS = ("lightgbm", "linear", "rules")
MODEL_FILE = {"lightgbm": "model.txt", "linear": "model.json", "rules": "model.json"}


class BundleError(Exception):
    """A bundle that must not be served; the message names the bad file."""


@dataclass
class Bundle:
    version: str
    path: Path
    feature_names: list[str]
    booster: lgb.Booster | None  # lightgbm only
    metrics: dict
    thresholds: dict  # {"flag": float, "block": float}
    golden_rows: list[dict]  # [{"features": {name: value}, "score": float}]
    trained_on: list[str] = field(default_factory=list)
    kind: str = "lightgbm"
    model: dict | None = None  # linear / rules: the parsed model.json
    meta: dict = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.path / "state"


# ---------------------------------------------------------------- linear and rules models
def signed_log1p(X: np.ndarray) -> np.ndarray:
    """The linear model's input transform: counts span 0..10^4 and shares -1..1; sign(x)*ln(1+|x|)
    keeps both in a range where one standardization fits."""
    return np.sign(X) * np.log1p(np.abs(X))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _linear_terms(model: dict, X: np.ndarray) -> np.ndarray:
    """Per-feature contributions to the log-odds of a linear model (n x features)."""
    Z = (signed_log1p(X) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return Z * np.asarray(model["coef"])


def rule_indicators(rules: list[dict], X: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """n x rules: 1.0 where every condition [feature, op, threshold] of a rule holds."""
    out = np.ones((len(X), len(rules)))
    for j, rule in enumerate(rules):
        for name, op, threshold in rule["conditions"]:
            col = X[:, feature_names.index(name)]
            out[:, j] *= (col >= threshold) if op == ">=" else (col <= threshold)
    return out


def _rule_terms(model: dict, X: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """A fired rule's weight, shared equally by the features its conditions read (n x features)."""
    ind = rule_indicators(model["rules"], X, feature_names)
    terms = np.zeros((len(X), len(feature_names)))
    for j, rule in enumerate(model["rules"]):
        names = sorted({c[0] for c in rule["conditions"]})
        for name in names:
            terms[:, feature_names.index(name)] += ind[:, j] * rule["weight"] / len(names)
    return terms


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
    """Scores in [0, 1] of rows X (n x features, float64, in bundle.feature_names order), for every
    kind. LightGBM runs single-threaded so batch and service results are identical."""
    X = np.asarray(X, dtype=np.float64)
    kind = getattr(bundle, "kind", "lightgbm")
    if kind == "lightgbm":
        return np.asarray(bundle.booster.predict(X, num_threads=1), dtype=np.float64)
    return _sigmoid(contributions(bundle, X).sum(axis=1))


def contributions(bundle: Bundle, X: np.ndarray) -> np.ndarray:
    """Per-feature contributions to the log-odds, n x (features + 1), last column = bias: TreeSHAP
    for LightGBM, coefficient x standardized input for linear, fired rules' weights for rules.
    Rows sum to the logit of `score_matrix`."""
    X = np.asarray(X, dtype=np.float64)
    kind = getattr(bundle, "kind", "lightgbm")
    if kind == "lightgbm":
        return np.asarray(bundle.booster.predict(X, pred_contrib=True, num_threads=1), dtype=np.float64)
    model = bundle.model
    terms = _linear_terms(model, X) if kind == "linear" else _rule_terms(model, X, list(bundle.feature_names))
    return np.hstack([terms, np.full((len(X), 1), float(model["intercept"]))])


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
    kind: str = "lightgbm",
    meta: dict | None = None,
) -> tuple[str, Path]:
    """Write a bundle atomically (temp dir, fsync, rename) and return (version, path).
    `model_text` is the model file's text: LightGBM text, or for linear/rules the model JSON.
    The version is a hash of the content, so the same model + state gives the same version."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}; one of {KINDS}")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        (tmp / MODEL_FILE[kind]).write_text(model_text)
        (tmp / "features.json").write_text(json.dumps({"feature_names": list(feature_names)}, indent=1))
        (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=1, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        (tmp / "golden_rows.json").write_text(json.dumps(golden_rows, indent=1))
        (tmp / "meta.json").write_text(json.dumps({**(meta or {}), "kind": kind, "trained_on": list(trained_on)},
                                                  indent=1, sort_keys=True))
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


def bundle_kind(path: Path) -> str:
    """The kind a bundle declares in meta.json (bundles from before kinds: lightgbm)."""
    kind = json.loads((Path(path) / "meta.json").read_text()).get("kind", "lightgbm")
    if kind not in KINDS:
        raise BundleError(f"{Path(path) / 'meta.json'}: unknown kind {kind!r}")
    return kind


def load_bundle(path: Path) -> Bundle:
    """verify_bundle, load the model, and check the golden rows reproduce their scores."""
    path = Path(path)
    verify_bundle(path)
    manifest = json.loads((path / MANIFEST).read_text())
    try:
        kind = bundle_kind(path)
        meta = json.loads((path / "meta.json").read_text())
        booster = lgb.Booster(model_file=str(path / "model.txt")) if kind == "lightgbm" else None
        model = json.loads((path / MODEL_FILE[kind]).read_text()) if kind != "lightgbm" else None
        bundle = Bundle(
            version=manifest["version"],
            path=path,
            feature_names=json.loads((path / "features.json").read_text())["feature_names"],
            booster=booster,
            metrics=json.loads((path / "metrics.json").read_text()),
            thresholds=json.loads((path / "thresholds.json").read_text()),
            golden_rows=json.loads((path / "golden_rows.json").read_text()),
            trained_on=meta["trained_on"],
            kind=kind,
            model=model,
            meta=meta,
        )
        n_model = booster.num_feature() if booster is not None else _declared_inputs(kind, model, bundle.feature_names)
    except (OSError, ValueError, KeyError, TypeError, lgb.basic.LightGBMError) as exc:
        raise BundleError(f"{path}: cannot load ({exc})") from None
    if n_model != len(bundle.feature_names):
        raise BundleError(f"{path / 'features.json'}: {len(bundle.feature_names)} features, model expects {n_model}")
    if bundle.golden_rows:
        X = np.vstack([feature_row(g["features"], bundle.feature_names) for g in bundle.golden_rows])
        got = score_matrix(bundle, X)
        want = np.array([g["score"] for g in bundle.golden_rows])
        bad = np.flatnonzero(np.abs(got - want) > GOLDEN_TOLERANCE)
        if bad.size:
            raise BundleError(f"{path / 'golden_rows.json'}: row {int(bad[0])} scores {got[bad[0]]!r}, expected {want[bad[0]]!r}")
    return bundle


def _declared_inputs(kind: str, model: dict, feature_names: list[str]) -> int:
    """How many inputs a linear/rules model.json reads (checked against features.json)."""
    float(model["intercept"])
    if kind == "linear":
        n = len(model["coef"])
        if not (len(model["mean"]) == len(model["scale"]) == n):
            raise ValueError("linear model: coef, mean and scale differ in length")
        return n
    for rule in model["rules"]:
        float(rule["weight"])
        for name, op, threshold in rule["conditions"] or [(None, None, None)]:
            if name not in feature_names or op not in (">=", "<=") or not isinstance(threshold, (int, float)):
                raise ValueError(f"rule {rule.get('name')!r}: condition {[name, op, threshold]} is not [known feature, '>=' or '<=', number]")
    return len(feature_names)
