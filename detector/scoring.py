"""IsolationForest scoring, and where models come from.

The features are scale-free (z-scores, ratios), so one forest per query can be
fitted on the pooled baseline rows of all its series and score every series in
one call. ``IsolationForestScorer`` is the ONE place where scikit-learn's sign
(``score_samples``: lower = more abnormal) is turned into ours: a score in 0..1,
higher = more anomalous (the original paper's ``s(x, n)``; about 0.5 for an
ordinary point).

An undefined feature (NaN: a percent change from a zero baseline, the volatility
ratio of a window too sparse to measure, ...) means "no evidence of change": 0 in
the forest's matrix, where every column is neutral (``Features.matrix``). The rows a
forest scores go through ``scoring_rows`` and the rows it is fitted on through
``fit_rows``, wherever they come from (the live cycle, trained models, backtests,
training): so a series that is ready always gets a score once its query has a forest.

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

from detector.features import Features

#: A forest is fitted on at least this many feature rows.
MIN_FIT_ROWS = 8


class NotFittedError(RuntimeError):
    pass


def neutral(X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``X`` (a copy) with the undefined features (NaN) of ``rows`` (default: all) set to 0:
    "no evidence of change" in every column of ``Features.matrix``."""
    X = np.array(X, dtype=np.float64)
    undefined = np.isnan(X)
    if rows is not None:
        undefined &= np.asarray(rows, dtype=bool)[:, None]
    X[undefined] = 0.0
    return X


def scoring_rows(
    f: Features,
    direction: str,
    at: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    times: np.ndarray | None = None,
    calendar: tuple[str, ...] = (),
) -> np.ndarray:
    """The rows a forest scores: ``f.design`` (``f.matrix`` plus ``calendar`` columns at
    ``times``) where the undefined features of ready (series, time) pairs are neutral.

    A row that is not ready keeps its NaN: it gets no score (the series is warming up).
    """
    X = f.matrix(direction, at) if not calendar else f.design(direction, times, calendar, at)
    ready = f.ready.reshape(-1) if at is None else f.ready[at]
    return neutral(X, ready)


def fit_rows(X: np.ndarray) -> np.ndarray:
    """The rows a forest is fitted on, out of candidate (ready) feature rows ``X``.

    The complete rows when there are at least ``MIN_FIT_ROWS`` of them (what the
    forest learns is then only what was measured); otherwise every candidate with its
    undefined features neutral, so that a query whose series are, say, all constant
    zero (percent change 0/0 everywhere) still gets a forest. Rows that stay
    non-finite are dropped.
    """
    X = np.asarray(X, dtype=np.float64)
    complete = np.isfinite(X).all(axis=1)
    if complete.sum() < MIN_FIT_ROWS:
        X = neutral(X)
        complete = np.isfinite(X).all(axis=1)
    return X[complete]


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
        """Fit on the candidate rows ``X``, as ``fit_rows`` picks them."""
        X = fit_rows(X)
        if len(X) < MIN_FIT_ROWS:
            raise ValueError(f"need at least {MIN_FIT_ROWS} feature rows to fit, got {len(X)}")
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
        """Anomaly score per row, 0..1, higher = more anomalous; NaN for incomplete rows
        (``scoring_rows`` leaves incomplete only the rows that are not ready)."""
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

    def reusable(self, query: str, n_features: int, *, now: float) -> Model | None:
        """The query's model if it is fresh enough to score ``n_features`` columns now:
        what ``model_for`` would return without fitting (the caller then needs no rows)."""
        model = self._models.get(query)
        fresh = model is not None and now - model.fitted_at < self.refit_seconds
        return model if fresh and n_features == model.scorer.n_features_ else None

    def model_for(self, query: str, train: np.ndarray, *, now: float) -> Model:
        model = self.reusable(query, train.shape[1], now=now)
        if model is not None:
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


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean path length of an unsuccessful BST search among n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class PackedForests:
    """Many fitted IsolationForests, one per row, scored in one vectorised walk.

    Calling ``score_samples`` of a separate forest per series costs milliseconds
    each (100 Python-level tree walks); packing the trees of every forest into flat
    node arrays walks all (series, tree) pairs at once, one numpy step per tree
    level. The result equals ``-forest.score_samples(row)`` (tested).
    """

    def __init__(self, forests: list[IsolationForest]) -> None:
        self.n = len(forests)
        n_trees = {len(f.estimators_) for f in forests}
        if len(n_trees) > 1:
            raise ValueError("PackedForests needs forests with the same number of trees")
        feats, thresh, left, right, samples, roots = [], [], [], [], [], []
        c_max = []
        offset = 0
        for forest in forests:
            subsample = forest._max_features != forest.n_features_in_
            for est, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
                tree = est.tree_
                f = tree.feature.astype(np.int64)
                if subsample:
                    f = np.where(f < 0, 0, np.asarray(columns)[np.maximum(f, 0)])
                feats.append(f)
                thresh.append(tree.threshold)
                cl, cr = tree.children_left, tree.children_right
                left.append(np.where(cl == -1, -1, cl + offset))
                right.append(np.where(cr == -1, -1, cr + offset))
                samples.append(tree.n_node_samples)
                roots.append(offset)
                offset += tree.node_count
            c_max.append(forest._max_samples)
        cat = np.concatenate if forests else (lambda parts: np.zeros(0, np.int64))
        cl, cr = cat(left).astype(np.int64), cat(right).astype(np.int64)
        leaf = cl == -1
        node = np.arange(len(cl))
        depth = _node_depths(cl, cr)
        self.feature = np.where(leaf, 0, cat(feats).astype(np.int64))
        self.threshold = cat(thresh).astype(np.float64)
        self.left = np.where(leaf, node, cl)  # leaves point at themselves: walking stops
        self.right = np.where(leaf, node, cr)
        self.leaf_value = np.where(leaf, depth + average_path_length(cat(samples)), 0.0)
        trees = next(iter(n_trees)) if n_trees else 1
        self.roots = np.asarray(roots, dtype=np.int64).reshape(self.n, trees)
        self.denominator = average_path_length(np.asarray(c_max, dtype=np.float64)) * trees
        self.max_depth = int(depth.max()) if len(depth) else 0

    def score(self, X: np.ndarray, forest: np.ndarray | None = None) -> np.ndarray:
        """Row i of ``X`` scored by forest ``forest[i]`` (default: forest i).

        0..1, higher = more anomalous; NaN for rows with a missing feature.
        """
        X = np.asarray(X, dtype=np.float64)
        which = np.arange(self.n) if forest is None else np.asarray(forest, dtype=np.int64)
        if X.shape[0] != len(which):
            raise ValueError(f"{len(which)} forests asked for but {X.shape[0]} rows")
        out = np.full(len(which), np.nan)
        ok = np.isfinite(X).all(axis=1)
        if not ok.any():
            return out
        # trees compare float32 inputs with float64 thresholds, as scikit-learn does
        x = X[ok].astype(np.float32).astype(np.float64)
        which = which[ok]
        nodes = self.roots[which]
        rows = np.broadcast_to(np.arange(len(x))[:, None], nodes.shape)
        for _ in range(self.max_depth):
            go_left = x[rows, self.feature[nodes]] <= self.threshold[nodes]
            nodes = np.where(go_left, self.left[nodes], self.right[nodes])
        depths = self.leaf_value[nodes].sum(axis=1)
        out[ok] = 2.0 ** (-depths / self.denominator[which])
        return out


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth (edges from the root) of every node of one tree."""
    parent = np.full(len(left), -1, dtype=np.int64)
    inner = np.nonzero(left != -1)[0]
    parent[left[inner]] = inner
    parent[right[inner]] = inner
    depth = np.zeros(len(left), dtype=np.float64)
    cur = np.arange(len(left))
    while True:
        up = parent[cur]
        has = up >= 0
        if not has.any():
            return depth
        depth += has
        cur = np.where(has, up, cur)
