"""PackedForests: the vectorised walk scores exactly like IsolationForest.score_samples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from detector.scoring import PackedForests, average_path_length

# (n_features, max_samples, max_features, seed)
CONFIGS = [
    (3, 256, 1.0, 1),
    (5, 100, 0.6, 2),  # feature subsampling
    (4, 50, 0.5, 3),  # feature subsampling, small trees
    (6, 0.5, 0.34, 4),  # max_samples as a share, two of six features per tree
    (5, "auto", 1.0, 5),
    (2, 20, 1, 6),  # max_features as an int: one feature per tree
    (8, 400, 3, 7),  # all rows, three of eight features
]


def _fit(n_features: int, max_samples, max_features, seed: int, n_trees: int = 40):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, n_features)) * rng.uniform(0.1, 10, n_features)
    X[:10] += 8.0  # a few outliers so trees are not all alike
    forest = IsolationForest(
        n_estimators=n_trees,
        max_samples=max_samples,
        max_features=max_features,
        random_state=seed,
    ).fit(X)
    return forest, X


def _expected(forest: IsolationForest, X: np.ndarray) -> np.ndarray:
    return -forest.score_samples(X)


@pytest.mark.parametrize(("n_features", "max_samples", "max_features", "seed"), CONFIGS)
def test_one_forest_equals_score_samples(n_features, max_samples, max_features, seed):
    forest, X = _fit(n_features, max_samples, max_features, seed)
    if not (isinstance(max_features, float) and max_features == 1.0):
        # the case under test really subsamples features
        assert forest._max_features < n_features
    rng = np.random.default_rng(100 + seed)
    T = np.vstack([X[:50], rng.normal(size=(300, n_features)) * 5])
    pack = PackedForests([forest])
    got = pack.score(T, np.zeros(len(T), dtype=np.int64))
    want = _expected(forest, T)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) < 1e-12
    assert np.all((got > 0) & (got < 1))


def test_many_forests_in_one_pack_with_index_mapping():
    n_features = 5
    forests = []
    for i, (_, ms, mf, seed) in enumerate(CONFIGS):
        mf = min(mf, n_features) if isinstance(mf, int) else mf
        forests.append(_fit(n_features, ms, mf, seed + 10 * i)[0])
    # a forest fitted on constant data: every tree is a single leaf
    forests.append(IsolationForest(n_estimators=40, random_state=0).fit(np.ones((30, n_features))))
    pack = PackedForests(forests)
    assert pack.n == len(forests)

    rng = np.random.default_rng(42)
    T = rng.normal(size=(600, n_features)) * 4
    which = rng.integers(0, len(forests), len(T))
    got = pack.score(T, which)
    want = np.array([_expected(forests[w], T[i : i + 1])[0] for i, w in enumerate(which)])
    assert np.max(np.abs(got - want)) < 1e-12

    # default mapping: row i is scored by forest i
    rows = T[: len(forests)]
    got = pack.score(rows)
    want = np.array([_expected(f, rows[i : i + 1])[0] for i, f in enumerate(forests)])
    assert np.max(np.abs(got - want)) < 1e-12

    # the mapping matters: scoring the same rows with another forest gives other scores
    shifted = pack.score(rows, (np.arange(len(forests)) + 1) % len(forests))
    assert np.max(np.abs(shifted - got)) > 1e-3


def test_values_next_to_a_threshold_go_where_scikit_learn_sends_them():
    """Trees compare float32 inputs: a float64 value just above a split may go left."""
    forest, X = _fit(4, 128, 1.0, 21, n_trees=60)
    base = np.median(X, axis=0)
    rows, disagree = [], 0
    for est in forest.estimators_:
        f, t = int(est.tree_.feature[0]), float(est.tree_.threshold[0])
        for target in (np.nextafter(t, np.inf), np.nextafter(t, -np.inf), t):
            row = base.copy()
            row[f] = target
            rows.append(row)
            disagree += bool((target <= t) != (float(np.float32(target)) <= t))
    T = np.array(rows)
    assert disagree > 0  # some rows sit where a float64 comparison would split otherwise
    got = PackedForests([forest]).score(T, np.zeros(len(T), dtype=np.int64))
    assert np.max(np.abs(got - _expected(forest, T))) < 1e-12


def test_rows_with_nan_score_nan_and_the_rest_is_unchanged():
    forest, _ = _fit(4, 128, 0.5, 11)
    other, _ = _fit(4, 64, 1.0, 12)
    pack = PackedForests([forest, other])
    T = np.random.default_rng(3).normal(size=(6, 4)) * 3
    T[1, 2] = np.nan
    T[4, 0] = np.inf
    which = np.array([0, 0, 1, 1, 1, 0])
    got = pack.score(T, which)
    assert np.isnan(got[1]) and np.isnan(got[4])
    ok = [0, 2, 3, 5]
    want = np.array([_expected([forest, other][which[i]], T[i : i + 1])[0] for i in ok])
    assert np.max(np.abs(got[ok] - want)) < 1e-12
    assert np.all(np.isnan(pack.score(np.full((2, 4), np.nan), np.array([0, 1]))))


def test_mismatched_tree_counts_raise():
    a, _ = _fit(3, 64, 1.0, 1, n_trees=10)
    b, _ = _fit(3, 64, 1.0, 2, n_trees=12)
    with pytest.raises(ValueError, match="same number of trees"):
        PackedForests([a, b])


def test_row_count_must_match_the_forest_index():
    a, _ = _fit(3, 64, 1.0, 1, n_trees=10)
    pack = PackedForests([a])
    with pytest.raises(ValueError):
        pack.score(np.zeros((3, 3)), np.array([0, 0]))
    with pytest.raises(ValueError):
        pack.score(np.zeros((2, 3)))  # default mapping: one row per forest


def test_empty_pack_scores_nothing():
    pack = PackedForests([])
    assert pack.n == 0
    assert pack.score(np.zeros((0, 3))).shape == (0,)


def test_average_path_length_matches_the_paper():
    n = np.array([0, 1, 2, 3, 256])
    got = average_path_length(n)
    h = np.log(n[3:] - 1.0) + np.euler_gamma
    assert got[:3].tolist() == [0.0, 0.0, 1.0]
    assert np.allclose(got[3:], 2 * h - 2 * (n[3:] - 1) / n[3:])
