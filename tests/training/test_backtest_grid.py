"""Backtests lay every series on its regular time grid: missing rows are missing points.

Without the grid, rows after a gap were taken as consecutive: a day of history minus
an hour of missing rows made "the same time yesterday" an hour off, and every window
after the gap held more time than it said.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.core.settings import load_settings
from detector.catalogue import Query
from training.runner import BacktestError, SeriesInput, backtest_series, infer_step, on_grid

STEP = 300.0  # 5-minute rows, four days of them
N = 4 * 288


def daily(seed: int = 1) -> tuple[pd.DatetimeIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    x = 100 + 40 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, N)
    x[3 * 288 + 100 : 3 * 288 + 112] += 60  # an hour of trouble on the last day
    ts = pd.DatetimeIndex(pd.to_datetime(1_700_000_000 + t * STEP, unit="s"))
    return ts, x


def test_the_step_is_the_regular_spacing_not_the_median_of_gappy_rows():
    ts, _ = daily()
    keep = np.ones(N, bool)
    keep[np.arange(0, N, 3)] = False  # every third row missing: the median gap is 2 steps
    assert infer_step(ts[keep]) == STEP
    dup = ts.insert(5, ts[5])  # a repeated timestamp is one row
    assert infer_step(dup) == STEP
    with pytest.raises(BacktestError):
        infer_step(ts[::-1])


def test_rows_land_on_their_grid_points_and_gaps_stay_missing():
    ts, x = daily()
    keep = np.ones(N, bool)
    keep[200:260] = False
    g = on_grid(ts[keep], x[keep], STEP)
    assert len(g.values) == N
    assert np.isnan(g.values[200:260]).all()
    np.testing.assert_array_equal(g.values[g.rows], x[keep])
    np.testing.assert_array_equal(g.rows, np.nonzero(keep)[0])


def test_a_gap_does_not_shift_the_seasonal_comparison():
    """Missing rows give exactly the verdicts of the same rows present but empty (the
    live detector's view of a scrape gap): nothing after the gap is moved."""
    ts, x = daily()
    keep = np.ones(N, bool)
    keep[2 * 288 + 30 : 2 * 288 + 90] = False  # five hours missing on day three
    settings = load_settings(metrics=None, config=None)
    query = Query(name="kpi", promql="csv", direction="both")
    holey = backtest_series([SeriesInput("kpi", ts[keep], x[keep])], settings, query)[0]
    blank = np.where(keep, x, np.nan)
    full = backtest_series([SeriesInput("kpi", ts, blank)], settings, query)[0]
    same = full[keep].reset_index(drop=True)
    assert len(holey) == keep.sum()
    for column in ("score", "anomaly_score", "anomalous", "reasons", "baseline"):
        pd.testing.assert_series_equal(holey[column], same[column], check_names=False)
    # and the incident after the gap is still found where it is
    onsets = holey.index[holey["anomaly_score"] > 0]
    hit = holey["timestamp"][onsets]
    start = ts[3 * 288 + 100]
    assert ((hit >= start) & (hit <= start + pd.Timedelta(minutes=30))).any(), hit
