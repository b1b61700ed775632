"""The vectorised trailing median and maximum equal pandas' rolling ones, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detector.rolling import trailing_max, trailing_median


def pandas_median(a: np.ndarray, lag: int, horizon: int) -> np.ndarray:
    return pd.DataFrame(a.T).shift(lag).rolling(horizon, min_periods=1).median().to_numpy().T


@pytest.mark.parametrize("seed", range(40))
def test_trailing_median_equals_pandas(seed):
    rng = np.random.default_rng(seed)
    n, T = int(rng.integers(32, 70)), int(rng.integers(1, 260))
    a = rng.normal(size=(n, T))
    if seed % 3 == 0:
        a = np.round(a, 1)  # ties
    a[rng.random((n, T)) < rng.random() * 0.6] = np.nan
    a[: n // 4 if seed % 5 == 0 else 0] = np.nan  # rows without any value
    lag = int(rng.integers(0, 80))
    horizon = int(rng.choice([2000, 300, 40]))  # a prefix window, or a sliding one (pandas)
    got = trailing_median(a, lag, horizon)
    np.testing.assert_array_equal(got, pandas_median(a, lag, horizon))


def test_trailing_median_few_series_and_short_rows():
    a = np.array([[8.0, 6.0, np.nan, 2.0, 3.0, 0.0]])
    np.testing.assert_array_equal(trailing_median(a, 1, 2000), pandas_median(a, 1, 2000))
    wide = np.tile(a, (40, 1))
    np.testing.assert_array_equal(trailing_median(wide, 1, 2000)[0], [np.nan, 8, 7, 7, 6, 4.5])
    np.testing.assert_array_equal(trailing_median(wide, 9, 2000), np.full((40, 6), np.nan))


@pytest.mark.parametrize("seed", range(30))
def test_trailing_max_equals_pandas(seed):
    rng = np.random.default_rng(seed)
    n, T = int(rng.integers(1, 20)), int(rng.integers(1, 900))
    p = np.maximum(rng.normal(size=(n, T)), 0.0)
    lag, window = int(rng.integers(0, 70)), int(rng.choice([400, 60, 7, 1]))
    min_count = min(int(rng.choice([1, 20, 3])), window)
    frame = pd.DataFrame(p.T).shift(lag).rolling(window, min_periods=min_count)
    np.testing.assert_array_equal(trailing_max(p, lag, window, min_count), frame.max().to_numpy().T)


def test_trailing_max_refuses_nan():
    with pytest.raises(ValueError):
        trailing_max(np.array([[1.0, np.nan]]), 0, 3, 1)
