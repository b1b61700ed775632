"""Seasonal profiles, the history-based scale floor and the blip/significance gates."""

from __future__ import annotations

import numpy as np
import pytest

from detector.explain import LevelShiftExplainer, VolatilityExplainer
from detector.features import FeatureSpec, compute_features, past_slices, seasonal_profile
from detector.verdict import Thresholds
from training.backtest import replay

STEP = 300.0  # 5-minute data: 288 points a day
DAY = 288
SEASONAL = FeatureSpec(step=STEP, baseline=5 * 3600.0, season=86400.0)
PLAIN = FeatureSpec(step=STEP, baseline=5 * 3600.0, season=0.0)


def square_wave(days: int = 6, noise: float = 0.0, seed: int = 1) -> np.ndarray:
    """Busy from 09:00 to 17:00, quiet otherwise: the look-alike of a daily peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    phase = t % DAY
    x = np.where((phase >= 108) & (phase < 204), 80.0, 20.0)
    return x + rng.normal(0, noise, len(t)) if noise else x


def onsets_after(r, start: int) -> np.ndarray:
    t = np.nonzero(r.onset[0])[0]
    return t[t >= start]


def test_profile_uses_the_past_only():
    x = square_wave(noise=1.0)[None, :]
    full = seasonal_profile(x, past_slices(x, DAY, 3))
    for t in (DAY + 5, 2 * DAY + 107, 4 * DAY + 150):
        part = seasonal_profile(x[:, : t + 1], past_slices(x[:, : t + 1], DAY, 3))
        np.testing.assert_allclose(part[0, t], full[0, t])
    assert np.isnan(full[0, : DAY - 1]).all()  # no period of history yet


def test_profile_removes_a_daily_square_wave():
    x = square_wave()[None, :]
    profile = seasonal_profile(x, past_slices(x, DAY, 3))
    resid = (x - profile)[0, 3 * DAY :]
    assert np.nanstd(resid) < 1e-9  # the peak is fully expected
    assert np.nanstd(x[0, 3 * DAY :]) > 25


@pytest.mark.parametrize(
    ("spec", "expect_quiet"),
    [(SEASONAL, True), (PLAIN, False)],
    ids=["seasonal", "plain"],
)
def test_a_daily_peak_is_not_an_incident_once_seasonality_is_known(spec, expect_quiet):
    x = square_wave(noise=0.5)
    r = replay(x, spec, Thresholds(), "both")
    late = onsets_after(r, 2 * DAY)
    assert (len(late) == 0) == expect_quiet, late


def test_a_day_without_its_peak_is_a_level_shift():
    x = square_wave(noise=0.5)
    x[5 * DAY + 108 : 5 * DAY + 204] = 20.0  # day 6: the peak never comes
    r = replay(x, SEASONAL, Thresholds(), "both")
    late = onsets_after(r, 2 * DAY)
    assert len(late) >= 1
    t = late[0]
    assert 5 * DAY + 108 <= t < 5 * DAY + 120, t
    # a missing peak reads as a level shift within the episode's first rows
    assert any("level_shift" in r.reasons(0, u) for u in range(t, t + 3))
    assert r.features.extra["seasonal"][0, t] > 0.5  # the seasonal yardstick


def test_seasonal_features_have_no_look_ahead():
    x = square_wave(noise=1.0)
    x[4 * DAY + 120 : 4 * DAY + 140] += 30
    th = Thresholds()
    full = replay(x, SEASONAL, th, "both", refit_every=300)
    for t in (3 * DAY + 10, 4 * DAY + 119, 4 * DAY + 125, 4 * DAY + 141, 5 * DAY):
        part = replay(x[: t + 1], SEASONAL, th, "both", refit_every=300)
        assert part.anomalous[0, t] == full.anomalous[0, t], t
        assert part.reasons(0, t) == full.reasons(0, t), t
        np.testing.assert_allclose(part.features.baseline[0, t], full.features.baseline[0, t])


def test_a_flat_stretch_does_not_shrink_the_scale_below_the_series_history():
    rng = np.random.default_rng(4)
    x = 50 + rng.normal(0, 2.0, 1200)
    x[900:1100] = 50.0  # a perfectly flat stretch (a stuck exporter, a quiet night)
    f = compute_features(x[None, :], PLAIN)
    assert f.scale[0, 1099] > 1.0  # still about the series' usual 2.0, not ~0
    no_memory = compute_features(x[None, :], FeatureSpec(step=STEP, scale_memory=0.0))
    assert no_memory.scale[0, 1099] < 0.1


def test_a_blip_shorter_than_the_shortest_window_is_not_a_level_shift():
    rng = np.random.default_rng(5)
    x = 100 + rng.normal(0, 1.0, 600)
    spec = FeatureSpec(step=60.0, baseline=300 * 60.0)
    blip = x.copy()
    blip[500:502] += 40  # 2 minutes
    shift = x.copy()
    shift[500:] += 40
    ex = LevelShiftExplainer(threshold=3.0)
    fb = compute_features(blip[None, :], spec)
    fs = compute_features(shift[None, :], spec)
    assert fb.z["5m"][0, 502] > 3 and fb.z["15m"][0, 502] > 3  # the means did move
    assert not ex.evaluate(fb).fired[0, 500:510].any()
    assert ex.evaluate(fs).fired[0, 503:510].all()


def test_volatility_needs_significance_when_windows_hold_few_points():
    rng = np.random.default_rng(6)
    x = 100 + rng.normal(0, 1.0, (200, 400))  # pure noise, coarse step: 6-point windows
    f = compute_features(x, PLAIN)
    ex = VolatilityExplainer(threshold=2.0)
    by_ratio = (np.nan_to_num(f.vol_ratio) >= 2.0) & f.ready
    fired = ex.evaluate(f).fired
    assert by_ratio.sum() > 20  # small windows cross 2x by chance...
    assert fired.sum() < by_ratio.sum() / 5  # ...which the significance gate mostly refuses


def test_a_backtest_takes_the_weekly_profile_where_the_weekend_is_quiet():
    """Weekdays with a 09:00–17:00 peak, weekends at 40 %: once three weeks are known the
    weekly profile explains the series and the fifth week's weekend is quiet; with the
    daily profile alone (Wednesday to Friday for a Saturday) it reads as an incident."""
    step, day = 600.0, 144
    week = 7 * day
    rng = np.random.default_rng(7)
    t = np.arange(5 * week)
    phase, dow = t % day, (t // day) % 7
    peak = np.where((phase >= 54) & (phase < 102), 1.6, 1.0)
    x = 100 * peak * np.where(dow >= 5, 0.4, 1.0) * (1 + rng.normal(0, 0.02, len(t)))
    last = slice(4 * week, 5 * week)
    weekend = dow[last] >= 5
    daily = replay(x, FeatureSpec(step=step, season=86400.0), Thresholds(), "both")
    auto = replay(x, FeatureSpec(step=step, season=86400.0, season_alt=7 * 86400.0), Thresholds())
    assert daily.anomalous[0, last][weekend].any()
    assert not auto.anomalous[0, last].any()
    assert auto.features.extra["weekly"][0, last].all()
    # before a week can be judged against the one before it, the daily profile is used
    assert not auto.features.extra["weekly"][0, : 2 * week].any()


def busy_and_quiet(seed: int, days: int = 8) -> np.ndarray:
    """A daily square wave whose noise grows with the level (6 %): 20 ± 1.2 at night,
    70 ± 4.2 from 09:00 to 17:00 (NAB's art_daily_small_noise is of this kind)."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    busy = (t % DAY >= 108) & (t % DAY < 204)
    return np.where(busy, 70.0, 20.0) * (1 + rng.normal(0, 0.06, len(t)))


def test_the_busy_hours_noise_widens_their_band_and_a_real_drop_still_fires():
    """The expected band of a seasonal series is never narrower than the profile's own
    miss at that time of day (``phase_spread``): the band of the quiet night no longer
    makes the first busy-hour wiggles spikes once the profile is known."""
    from detector.features import phase_spread

    later = []
    for seed in range(5):
        r = replay(busy_and_quiet(seed), SEASONAL, Thresholds(), "both")
        later.extend(onsets_after(r, 3 * DAY).tolist())
    assert later == []
    # the floor: at a busy hour, about the busy hours' noise; at night, the night's
    x = busy_and_quiet(0)[None, :]
    spread = phase_spread(past_slices(x, DAY, 3), x.shape[1])
    day4 = np.arange(4 * DAY, 5 * DAY)
    busy = (day4 % DAY >= 120) & (day4 % DAY < 190)
    night = day4 % DAY < 90
    assert 2.5 < np.median(spread[0, day4[busy]]) < 8.0
    assert np.median(spread[0, day4[night]]) < 2.0
    # a busy day that stays at half its level is still an incident
    x = busy_and_quiet(1)
    x[6 * DAY + 130 : 6 * DAY + 200] *= 0.5
    r = replay(x, SEASONAL, Thresholds(), "both")
    assert r.anomalous[0, 6 * DAY + 130 : 6 * DAY + 145].any()
