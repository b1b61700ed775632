"""A series' own levels: what is rare *for this series* is an anomaly, and the score says so.

Heavy-tailed 1-minute series (request rates, CPU) reach 7 band sds every few hours; the
spike level climbs the rungs AIOPS_SPIKE_Z × 1.4**k until at most 4 of the last 2,000
points reached it. Every other reason has its own level too, as a multiple of its
threshold: the lowest rung its strength rose to at most once in the last 1,440 points.
``aiops_anomaly_score`` is the strongest reason over that level: the same meaning on
every series, at least 1 exactly while anomalous. Backtests compute the levels from the
history they replay; the live detector, whose lookback is short, takes the ones the
nightly retrain stored with the model.
"""

from __future__ import annotations

import numpy as np
import pytest

from aiops.core.series import series_key
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.features import FeatureSpec, compute_features
from detector.pipeline import detect_batch
from detector.scoring import BaselineModelProvider
from detector.source import SeriesBatch
from detector.verdict import (
    BELOW_ONE,
    LEVEL_MEMORY,
    LEVEL_MIN_KNOWN,
    SCORE_CAP,
    SPIKE_MEMORY,
    SPIKE_MIN_KNOWN,
    SPIKE_RUNG,
    Thresholds,
    calibrated_score,
    latest_levels,
    reason_levels,
    spike_levels,
)
from training.backtest import replay

BASE = 7.0


def test_the_level_is_the_base_until_the_history_is_long_enough_then_the_lowest_rare_rung():
    n = 4000
    z = np.zeros((2, n))
    z[1, 100:3000:100] = 8.0  # 29 points of 8 sds, every 100 points
    level = spike_levels(z, BASE)
    assert (level[:, :SPIKE_MIN_KNOWN] == BASE).all()  # too short a history: the base
    assert (level[0] == BASE).all()  # a quiet series keeps the base
    # once more than 4 of the last 2,000 points reached 7 (and 8 < 9.8), the next rung
    assert level[1, 2500] == pytest.approx(BASE * SPIKE_RUNG)
    # and the level comes down once all but 4 of them have left the memory
    longer = np.concatenate([z, np.zeros((2, 3000))], axis=1)
    assert spike_levels(longer, BASE)[1, 2500 + SPIKE_MEMORY + 1] == BASE
    assert level[1, -1] == pytest.approx(BASE * SPIKE_RUNG)


def test_a_reason_level_counts_rises_not_points_and_needs_a_history():
    n = 3000
    ready = np.ones((3, n), dtype=bool)
    s = np.zeros((3, n))
    s[1, 1100:1400] = 1.2  # one long episode at 1.2 thresholds: one rise
    s[2, 1100:1400:50] = 1.5  # six short ones at 1.5 thresholds: six rises
    level = reason_levels(s, ready)
    assert (level[:, :LEVEL_MIN_KNOWN] == 1.0).all()  # too short a history: the threshold
    assert (level[0] == 1.0).all()  # a quiet series keeps its threshold
    assert (level[1] == 1.0).all()  # a long episode is one event, not 300
    # six rises to 1.5 (and 1.4) within the memory: the next rung up, 1.96
    assert level[2, 1500] == pytest.approx(SPIKE_RUNG**2)
    # and back to the threshold once they have left the memory
    assert level[2, 1400 + LEVEL_MEMORY] == 1.0
    # a series that is not ready does not count towards the history
    assert (reason_levels(s, np.zeros((3, n), dtype=bool)) == 1.0).all()


def test_the_levels_after_a_history_are_what_training_stores():
    n = 4000
    x = np.vstack([heavy(n), 100 + np.random.default_rng(4).normal(0, 1.0, n)])
    f = compute_features(x, FeatureSpec(step=60.0))
    after = latest_levels(f, Thresholds(), "both")
    assert {"spike", "level_shift", "volatility_spike", "trend_break", "percent_change"} <= set(
        after
    )
    # the heavy-tailed series' spike level is above the base, the quiet one's at it
    assert after["spike"][0] > BASE and after["spike"][1] == BASE
    for reason, level in after.items():
        assert level.shape == (2,) and (level >= (BASE if reason == "spike" else 1.0)).all()
    short = compute_features(x[:, :500], FeatureSpec(step=60.0))
    assert all(np.isnan(v).all() for v in latest_levels(short, Thresholds(), "both").values())


def heavy(n: int, seed: int = 2) -> np.ndarray:
    """A 1-minute series with a 7.5-sd point every 150 minutes."""
    rng = np.random.default_rng(seed)
    x = 100 + rng.normal(0, 1.0, n)
    x[300::150] += 7.5
    return x


def test_a_backtest_stops_calling_a_series_usual_tail_a_spike_but_keeps_a_rare_one():
    n = 6000
    x = heavy(n)
    x[5000] += 40.0  # forty sds: rare for this series too
    spec = FeatureSpec(step=60.0)
    r = replay(x, spec, Thresholds(), "both")
    (spike,) = [ev for ev in r.evidence if ev.reason == "spike"]
    usual = [t for t in range(2000, n, 1) if (t - 300) % 150 == 0 and t != 5000]
    z = r.features.band_z[0, usual]
    assert (z >= BASE).sum() >= 15  # at the base level most of them would be spikes
    # at its own level only the rare top of its usual tail is (at most 4 in 2,000 points)
    assert spike.fired[0, usual].sum() <= 2
    assert r.anomalous[0, 5000] and spike.fired[0, 5000]
    assert spike.threshold[0, 5000] == pytest.approx(BASE * SPIKE_RUNG)
    # early on (too little history for the series' own level) the base applies
    early = [t for t in range(300, 1000, 150) if spike.fired[0, t]]
    assert early


def test_the_live_detector_takes_the_level_its_trained_model_stored():
    n = 361
    rng = np.random.default_rng(5)
    values = 100 + rng.normal(0, 1.0, (2, n))
    values[:, -1] += 11.0  # eleven sds: a spike at the base (7), not at 13.7
    labels = [{"app": "quiet"}, {"app": "noisy"}]
    batch = SeriesBatch("lat", 1_700_000_000.0 - 60 * (n - 1), 60.0, labels, values)
    query = Query(name="lat", promql="x", direction="up", labels=("app",), seasonality="none")
    settings = load_settings(metrics=None, config=None)

    class Trained(BaselineModelProvider):
        def levels(self, name: str) -> dict[str, dict[str, float]]:
            return {series_key(name, {"app": "noisy"}): {"spike": BASE * SPIKE_RUNG**2}}

    plain = detect_batch(
        batch, query, settings, BaselineModelProvider(refit_seconds=3600), now=1.7e9
    )
    trained = detect_batch(batch, query, settings, Trained(refit_seconds=3600), now=1.7e9)
    by = {r.labels["app"]: r for r in plain}
    assert by["quiet"].anomalous and by["noisy"].anomalous
    by = {r.labels["app"]: r for r in trained}
    assert by["quiet"].anomalous and [x.reason for x in by["quiet"].reasons] == ["spike"]
    assert not by["noisy"].anomalous
    # the score is calibrated on each series' own level: 11 sds is 11/7 of the quiet
    # series' spike level and 11/13.7 of the noisy one's (a gated point reads below 1)
    assert by["quiet"].score == pytest.approx(11.0 / BASE, rel=0.15)
    assert by["noisy"].score < 1.0
    assert 0.0 <= by["quiet"].forest_score <= 1.0


def recurring_drops(n: int, seed: int = 3) -> tuple[np.ndarray, list[int], int]:
    """A 1-minute series with a 30-minute drop of 6 sds every 6 hours (a batch job,
    give or take 20 minutes), and one drop of 18 sds."""
    rng = np.random.default_rng(seed)
    x = 100 + rng.normal(0, 1.0, n)
    starts = []
    for s in range(300, n - 200, 360):
        at = s + int(rng.integers(-20, 20))
        x[at : at + 30] -= 6.0
        starts.append(at)
    big = 5000
    x[big : big + 30] -= 18.0
    return x, [s for s in starts if abs(s - big) > 100], big


def test_a_change_that_recurs_every_few_hours_stops_paging_but_a_larger_one_still_does():
    x, drops, big = recurring_drops(4 * 1440)
    r = replay(x, FeatureSpec(step=60.0), Thresholds(), "both")
    (shift,) = [ev for ev in r.evidence if ev.reason == "level_shift"]
    around = [slice(s - 5, s + 40) for s in drops]
    # the first drops are news
    assert r.anomalous[0, around[0]].any()
    # once a day holds several, the series' own level_shift threshold has risen above 3 sds
    later = [sl for s, sl in zip(drops, around, strict=True) if s > 2 * 1440]
    assert all(np.max(shift.threshold[0, sl]) > Thresholds().z_thresh for sl in later)
    # and most of them no longer alarm
    assert sum(r.anomalous[0, sl].any() for sl in later) <= len(later) // 4
    # the drop three times as deep is rare for this series too: it still pages
    at = slice(big, big + 10)
    assert r.anomalous[0, at].any()
    assert "level_shift" in {x for t in range(big, big + 10) for x in r.reasons(0, t)}
    assert np.nanmax(r.calibrated[0, at]) > 1.5


def test_the_score_is_at_least_one_exactly_where_anomalous():
    x, _, big = recurring_drops(4 * 1440)
    noisy = heavy(4 * 1440)
    noisy[big] += 60.0
    r = replay(np.vstack([x, noisy]), FeatureSpec(step=60.0), Thresholds(), "both")
    scored = np.isfinite(r.score)
    assert np.array_equal(np.isfinite(r.calibrated), scored)  # no forest yet: no score
    assert r.anomalous[scored].any() and (~r.anomalous[scored]).any()
    assert np.array_equal(r.calibrated[scored] >= 1.0, r.anomalous[scored])
    assert r.calibrated[scored].min() >= 0.0
    assert (r.calibrated[scored & ~r.anomalous] <= BELOW_ONE).all()
    # the rule itself: a held anomaly reads 1, a gated point just below 1
    cal = np.array([0.4, 1.7, 0.3, 2.5])
    anomalous = np.array([False, True, True, False])
    assert calibrated_score(cal, anomalous).tolist() == [0.4, 1.7, 1.0, BELOW_ONE]
    # and it never runs away: a change of a flat line (standard errors near 0) reads 100
    huge = np.array([2e12, np.inf, 2e12])
    assert calibrated_score(huge, np.array([True, True, False])).tolist() == [
        SCORE_CAP,
        SCORE_CAP,
        BELOW_ONE,
    ]
    assert SCORE_CAP == 100.0


def test_a_burst_on_a_series_that_is_mostly_zero_scores_at_the_cap():
    """A count that is 0 but for a 1 now and then, then 20 for half an hour: the change's
    significance (over a standard error near 0) runs to 10^12; the score stops at 100."""
    x = (np.random.default_rng(0).random(3000) < 0.01).astype(float)
    x[2500:2530] += 20.0
    r = replay(x, FeatureSpec(step=60.0), Thresholds(), "both")
    assert r.anomalous[0, 2500:2510].all()
    assert np.nanmax(r.calibrated) == SCORE_CAP
    assert (r.calibrated[0, 2500:2530] > 10).all()
