"""IsolationForest scoring, and where models come from.

The features are scale-free (z-scores, ratios), so one forest per query can be
fitted on the pooled baseline rows of all its series and score every series in
one call. ``IsolationForestScorer`` is the ONE place where scikit-learn's sign
(``score_samples``: lower = more abnormal) is turned into ours: a score in 0..1,
higher = more anomalous (the original paper's ``s(x, n)``; about 0.5 for an
ordinary point).

``ModelProvider`` is the seam for the model registry: the default
``BaselineModelProvider`` fits on the lookback's baseline part and reuses the
fit for ``refit_seconds``; a registry-backed provider can hand out trained,
versioned models instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sklearn.ensemble import IsolationForest


class NotFittedError(RuntimeError):
    pass


class IsolationForestScorer:
    """IsolationForest with our score direction and NaN-tolerant rows."""

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        max_train_rows: int = 20000,
        random_state: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_train_rows = max_train_rows
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray) -> IsolationForestScorer:
        X = np.asarray(X, dtype=np.float64)
        X = X[np.isfinite(X).all(axis=1)]
        if len(X) < 8:
            raise ValueError(f"need at least 8 complete feature rows to fit, got {len(X)}")
        rng = np.random.default_rng(self.random_state)
        if len(X) > self.max_train_rows:
            X = X[rng.choice(len(X), self.max_train_rows, replace=False)]
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        ).fit(X)
        self.n_samples_ = len(X)
        self.n_features_ = X.shape[1]
        self.fitted_at_ = time.time()
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row, 0..1, higher = more anomalous; NaN for incomplete rows."""
        if not hasattr(self, "forest_"):
            raise NotFittedError("IsolationForestScorer is not fitted")
        X = np.asarray(X, dtype=np.float64)
        out = np.full(len(X), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            out[ok] = -self.forest_.score_samples(X[ok])
        return out


@dataclass
class Model:
    scorer: IsolationForestScorer
    version: str
    fitted_at: float


class ModelProvider(Protocol):
    def model_for(self, query: str, train: np.ndarray, *, now: float) -> Model: ...

    def current(self, query: str) -> Model | None: ...


class BaselineModelProvider:
    """Fits one forest per query on baseline feature rows; refits after ``refit_seconds``."""

    def __init__(self, *, refit_seconds: float = 3600.0, random_state: int = 0) -> None:
        self.refit_seconds = refit_seconds
        self.random_state = random_state
        self._models: dict[str, Model] = {}

    def model_for(self, query: str, train: np.ndarray, *, now: float) -> Model:
        model = self._models.get(query)
        fresh = model is not None and now - model.fitted_at < self.refit_seconds
        if fresh and train.shape[1] == model.scorer.n_features_:
            return model
        scorer = IsolationForestScorer(random_state=self.random_state).fit(train)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        model = Model(scorer, f"baseline-{stamp}", now)
        self._models[query] = model
        return model

    def current(self, query: str) -> Model | None:
        return self._models.get(query)

    def forget(self, query: str) -> None:
        self._models.pop(query, None)
