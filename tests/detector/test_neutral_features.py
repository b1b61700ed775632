"""Undefined features are neutral, in the one place every path shares.

``detector.scoring.fit_rows`` and ``scoring_rows`` decide what a forest is fitted on and
what it scores, for the live cycle, trained models, backtests and training alike: a
NaN feature of a ready row (a percent change from a zero baseline, ...) is 0, "no
evidence of change"; a row that is not ready keeps its NaN and gets no score.
"""

from __future__ import annotations

import numpy as np
import pytest

from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.features import FeatureSpec, compute_features
from detector.pipeline import feature_spec
from detector.scoring import MIN_FIT_ROWS, IsolationForestScorer, fit_rows, neutral, scoring_rows
from detector.verdict import SCORE_TOLERANCE, Thresholds, forest_gate
from training.backtest import replay
from training.runner import PASSIVE_WEIGHT, event_score
from training.train import Outcome, _series_data

SPEC = FeatureSpec(step=60.0, windows=((180.0, 3), (360.0, 6), (720.0, 12)), baseline=1800.0)


def _rows(n: int, *, complete: int) -> np.ndarray:
    X = np.random.default_rng(0).standard_normal((n, 6))
    X[complete:, 5] = np.nan  # the percent change undefined
    return X


def test_fit_rows_keeps_the_complete_rows_when_there_are_enough():
    X = _rows(40, complete=MIN_FIT_ROWS)
    assert np.array_equal(fit_rows(X), X[:MIN_FIT_ROWS])


def test_fit_rows_neutralises_every_row_when_too_few_are_complete():
    X = _rows(40, complete=MIN_FIT_ROWS - 1)
    out = fit_rows(X)
    assert out.shape == X.shape and np.isfinite(out).all()
    assert (out[MIN_FIT_ROWS - 1 :, 5] == 0.0).all()
    assert np.array_equal(out[:, :5], X[:, :5])
    assert np.isnan(X).any()  # the caller's rows are not changed


def test_a_forest_is_fitted_on_rows_none_of_which_is_complete():
    scorer = IsolationForestScorer().fit(_rows(40, complete=0))
    assert scorer.n_samples_ == 40
    with pytest.raises(ValueError, match="at least 8"):
        IsolationForestScorer().fit(_rows(7, complete=0))


def test_neutral_only_touches_the_rows_asked_for():
    X = np.array([[1.0, np.nan], [np.nan, 2.0]])
    assert np.array_equal(neutral(X), [[1.0, 0.0], [0.0, 2.0]])
    out = neutral(X, np.array([True, False]))
    assert out[0, 1] == 0.0 and np.isnan(out[1, 0])


def test_scoring_rows_neutralise_ready_rows_and_leave_the_others_unscored():
    x = np.zeros((2, 120))
    x[1, :60] = np.nan  # no history yet at the start
    f = compute_features(x, SPEC)
    X = scoring_rows(f, "both").reshape(2, 120, -1)
    raw = f.matrix("both").reshape(2, 120, -1)
    assert np.isnan(raw[f.ready]).any()  # percent change 0/0 on ready rows ...
    assert np.isfinite(X[f.ready]).all()  # ... neutral in the rows scored
    assert (X[f.ready][:, -1] == 0.0).all()
    assert np.isnan(X[~f.ready]).any(axis=-1).all()  # not ready: no score
    # the same rule picked by (series, time) pairs, with calendar columns
    at = (np.array([0, 1]), np.array([119, 30]))
    Xc = scoring_rows(f, "both", at, times=np.arange(120) * 60.0, calendar=("hour_sin",))
    assert Xc.shape == (2, 7) and np.isfinite(Xc[0]).all() and np.isnan(Xc[1, :6]).all()


def test_a_forest_of_identical_rows_scores_one_half_and_the_gate_lets_it_through():
    for n in range(8, 40):
        scores = IsolationForestScorer().fit(np.zeros((n, 6))).score(np.ones((3, 6)))
        assert np.allclose(scores, 0.5, atol=SCORE_TOLERANCE)
        assert forest_gate(scores, 0.5).all()
        assert not forest_gate(scores, 0.6).any()
    assert forest_gate(np.array([0.4999999999999993, np.nan, 0.3]), 0.5).tolist() == [
        True,
        True,  # no forest: the explainers decide alone
        False,
    ]


def test_a_backtest_scores_a_zero_baseline_series_and_weighs_its_onsets_as_ordinary():
    x = np.zeros((1, 400))
    x[0, 300:] = 50.0  # a jump from a zero baseline: percent change undefined
    th = Thresholds()
    r = replay(x, SPEC, th, "both", refit_every=50)
    first = np.argmax(np.isfinite(r.score[0]))
    assert first > 0 and np.isfinite(r.score[0, first:][r.features.ready[0, first:]]).all()
    onset = np.nonzero(r.onset[0])[0]
    assert len(onset) and onset[0] >= 300
    t = onset[0]
    assert np.isnan(r.features.pct_change[0, t])
    # the forest's factor of an onset whose row had an undefined feature is 0.5
    events = event_score(r)
    agree = sum(ev.fired[0, t] for ev in r.evidence)
    weight = np.log1p(max(r.weight[0, t], 1.0)) * np.sqrt(max(agree, 1.0))
    # an onset that only a passive reason (spike) holds weighs PASSIVE_WEIGHT of that
    share = 1.0 if r.active[0, t] else PASSIVE_WEIGHT
    assert events[0, t] == pytest.approx(weight * 0.5 * share)


def test_training_a_constant_zero_series_fits_on_neutral_rows():
    settings = load_settings(metrics=None, config=None)
    query = Query(name="errors", promql="x", direction="up")
    spec = feature_spec(query, settings, 60.0)
    x = np.zeros((1, 1500))
    f = compute_features(x, spec)
    times = 1.7e9 + 60.0 * np.arange(1500)
    data = _series_data(f, 0, query, "errors{}", {}, times, (), 1200, 1260)
    assert not isinstance(data, Outcome), data
    assert len(data.X_train) >= 500 and np.isfinite(data.X_train).all()
    assert (data.X_train[:, -1] == 0.0).all()  # pct_change 0/0: neutral
    assert len(data.X_tail) >= 60 and np.isfinite(data.X_tail).all()


def test_a_backtest_gives_no_verdict_before_its_first_forest_as_live():
    """Live, a ready series of a query without a forest is warming up, never anomalous;
    a replay gives the columns before its first fit no verdict either."""
    x = 100.0 + np.random.default_rng(3).standard_normal((1, 200))
    x[0, 40:] += 50.0  # mature (baseline half full) before the first forest (column 52)
    r = replay(x, SPEC, Thresholds(), "both")
    first = int(np.argmax(np.isfinite(r.score[0])))
    assert r.features.mature[0, 40] and first > 40
    assert not r.anomalous[0, :first].any()
    assert not any(ev.fired[0, :first].any() for ev in r.evidence)
