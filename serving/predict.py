"""LightGBM scoring through its C API, without `Booster.predict`'s per-call Python work.

`Booster.predict` costs ~23 µs for one row of a 200-tree model (it deep-copies parameters,
builds a predictor, counts outputs) while walking the trees takes ~5 µs. The service scores one
call per request most of the time, so it keeps a single-row "fast config" (built once per
model) and calls `LGBM_BoosterPredictForMat` directly for batches. Same booster, same input,
same computation as `model_bundle.score_matrix`: `FastPredictor.check` proves the results are
bit-identical on every model before it is served.
"""

from __future__ import annotations

import ctypes

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call

_FLOAT64 = 1  # C_API_DTYPE_FLOAT64
_ROW_MAJOR = 1
_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities for a binary objective
_PARAMS = b"num_threads=1"
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


class FastPredictor:
    """Probabilities of float64 rows (n x ncol, C order) from one booster. Not thread-safe: the
    service calls it from the event loop only."""

    def __init__(self, booster: lgb.Booster, ncol: int) -> None:
        self._booster = booster  # keeps the handle alive
        self.ncol = ncol
        self._num_iteration = booster.best_iteration  # what Booster.predict uses by default
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_NORMAL), ctypes.c_int(0), ctypes.c_int(self._num_iteration),
            ctypes.c_int(_FLOAT64), ctypes.c_int32(ncol), ctypes.c_char_p(_PARAMS), ctypes.byref(self._config)))
        self._out_len = ctypes.c_int64(0)
        self._one = np.empty(1, dtype=np.float64)
        self._one_p = self._one.ctypes.data_as(_DOUBLE_P)

    def predict(self, X: np.ndarray) -> np.ndarray:
        if X.dtype != np.float64 or not X.flags.c_contiguous or X.ndim != 2 or X.shape[1] != self.ncol:
            raise ValueError(f"expected a C-ordered float64 matrix with {self.ncol} columns, got {X.dtype} {X.shape}")
        n = X.shape[0]
        if n == 1:
            _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFast(
                self._config, X.ctypes.data_as(ctypes.c_void_p), ctypes.byref(self._out_len), self._one_p))
            return self._one.copy()
        out = np.empty(n, dtype=np.float64)
        _safe_call(_LIB.LGBM_BoosterPredictForMat(
            self._booster._handle, X.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(_FLOAT64), ctypes.c_int32(n),
            ctypes.c_int32(self.ncol), ctypes.c_int(_ROW_MAJOR), ctypes.c_int(_NORMAL), ctypes.c_int(0),
            ctypes.c_int(self._num_iteration), ctypes.c_char_p(_PARAMS), ctypes.byref(self._out_len),
            out.ctypes.data_as(_DOUBLE_P)))
        if self._out_len.value != n:
            raise ValueError(f"LightGBM returned {self._out_len.value} predictions for {n} rows")
        return out

    def check(self, X: np.ndarray, expected: np.ndarray) -> None:
        """Raise unless both paths (single row and matrix) give exactly `expected` (Booster.predict's)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        singles = np.array([self.predict(X[i : i + 1])[0] for i in range(len(X))])
        for name, got in (("single-row", singles), ("matrix", self.predict(X) if len(X) > 1 else singles)):
            if not np.array_equal(got, expected):
                raise ValueError(f"the {name} C API path does not reproduce Booster.predict "
                                 f"(max diff {np.max(np.abs(got - expected))})")

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value:
            _LIB.LGBM_FastConfigFree(config)
            self._config = None
