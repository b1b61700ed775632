"""The live detector's seasonal history: past-period slices fetched and cached (detector.season).

The live cycle fetches a 6 h window; the daily profile needs the same hours of the
last three days. These tests serve a long history from an in-memory "Prometheus"
that answers any range, and check that the slices the detector fetches give the
same profile as a backtest over the whole history, that later cycles fetch only
the new steps, and that a daily peak stays quiet live while a real shift fires.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiops.core.errors import QueryError
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import Detector
from detector.features import (
    compute_features,
    past_slices,
    phase_spread,
    seasonal_fit,
    seasonal_profile,
)
from detector.pipeline import feature_spec
from detector.season import SeasonalHistory
from detector.source import SeriesBatch, align_end

STEP = 60.0
DAY = 1440
WEEK = 7 * DAY
T0 = 1_700_006_400.0  # a multiple of the step and of the day: midnight UTC
LABELS = [{"app": "shop"}, {"app": "blog"}]


def history(days: int = 4, seed: int = 3) -> np.ndarray:
    """Two series with a daily peak from 09:00 to 17:00 (+60 %), noise and a slow wobble."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    phase = t % DAY
    peak = np.where((phase >= 540) & (phase < 1020), 1.6, 1.0)
    base = np.stack([100.0 * peak, 40.0 * peak])
    return base * (1 + rng.normal(0, 0.01, base.shape))


class ArraySource:
    """A Prometheus holding ``values`` from ``T0`` at ``STEP``: answers any range of it."""

    def __init__(self, values: np.ndarray, fail_before: float | None = None) -> None:
        self.values = values
        self.fail_before = fail_before
        self.requests: list[tuple[float, int]] = []

    def fetch(self, query: Query, *, end: float, lookback: float, step: float) -> SeriesBatch:
        end = align_end(end, step)
        n = round(lookback / step) + 1
        start = end - step * (n - 1)
        if self.fail_before is not None and end < self.fail_before:
            raise QueryError(query.name, "timeout", "no answer within 10s")
        self.requests.append((start, n))
        out = np.full((len(LABELS), n), np.nan)
        first = round((start - T0) / step)
        lo, hi = max(first, 0), min(first + n, self.values.shape[1])
        if lo < hi:
            out[:, lo - first : hi - first] = self.values[:, lo:hi]
        return SeriesBatch(query.name, start, step, list(LABELS), out)

    def check(self, query: Query) -> None:
        pass


QUERY = Query(name="orders", promql="x", direction="both", labels=("app",))


@pytest.fixture
def settings(monkeypatch):
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    return load_settings(interval_seconds=60, stale_after_seconds=300)


def window_at(source: ArraySource, t: int, settings) -> SeriesBatch:
    return source.fetch(
        QUERY, end=T0 + t * STEP, lookback=QUERY.lookback_seconds(settings), step=STEP
    )


def test_fetched_slices_give_the_profile_of_the_whole_history(settings):
    x = history()
    source = ArraySource(x)
    spec = feature_spec(QUERY, settings, STEP)
    t = 3 * DAY + 600  # 10:00 on the fourth day, inside the peak
    batch = window_at(source, t, settings)
    past = SeasonalHistory(source).slices(QUERY, batch, spec)
    # three days back: live, a series takes the weekly profile only once the nightly
    # retrain found it weekly (a 6 h window cannot tell)
    assert spec.periods == (DAY,)
    assert past is not None and past.shape == (3, 2, batch.values.shape[1] + 2)

    full = x[:, : t + 1]
    width = batch.values.shape[1]
    full_past = past_slices(full, DAY, 3)
    np.testing.assert_array_equal(past, full_past[:, :, -(width + 2) :])
    live = seasonal_profile(batch.values, past)
    offline = seasonal_profile(full, full_past)[:, -width:]
    np.testing.assert_array_equal(live, offline)
    # the band's floor from the profile's miss: from the slices' own columns, the same
    np.testing.assert_array_equal(
        phase_spread(past, width), phase_spread(full_past, full.shape[1])[:, -width:]
    )
    horizon = spec.baseline_points + spec.longest
    np.testing.assert_allclose(  # prefix sums over different spans: rounding only
        seasonal_fit(past, horizon)[:, -1], seasonal_fit(full_past, horizon)[:, t], rtol=1e-9
    )
    # the peak is explained: the live window's seasonal features are used at its newest point
    f = compute_features(batch.values, spec, past)
    assert (f.extra["seasonal"][:, -1] > 0.5).all()


def test_later_cycles_fetch_only_the_new_steps(settings):
    source = ArraySource(history())
    spec = feature_spec(QUERY, settings, STEP)
    seasons = SeasonalHistory(source)
    t = 3 * DAY + 600
    seasons.slices(QUERY, window_at(source, t, settings), spec)
    cold = seasons.fetched_points
    batch = window_at(source, t + 1, settings)
    past = seasons.slices(QUERY, batch, spec)
    warm = seasons.fetched_points - cold
    assert cold == 3 * (batch.values.shape[1] + 2)
    assert warm <= 3 * 4, warm  # one new step per slice, plus the overlap for rates
    fresh = SeasonalHistory(source).slices(QUERY, batch, spec)
    np.testing.assert_array_equal(past, fresh)


def run_at(det: Detector, t: int):
    report = det.run_cycle(now=T0 + t * STEP + 5)
    return {r.labels["app"]: r for r in report.results[QUERY.name]}


def test_a_daily_peak_stays_quiet_live_and_a_real_shift_fires(settings):
    x = history()
    x[1, 3 * DAY + 700 :] *= 0.5  # the blog halves at 11:40 on day 4
    det = Detector(settings, queries=[QUERY], source=ArraySource(x), registry=CollectorRegistry())
    quiet = [run_at(det, t)["shop"] for t in range(3 * DAY + 530, 3 * DAY + 600, 5)]
    assert [r.anomalous for r in quiet] == [False] * len(quiet)  # the 09:00 ramp: expected
    hit = run_at(det, 3 * DAY + 712)["blog"]
    assert hit.anomalous and {r.reason for r in hit.reasons} & {"level_shift", "percent_change"}

    plain = QUERY.model_copy(update={"seasonality": "none"})
    det2 = Detector(settings, queries=[plain], source=ArraySource(x), registry=CollectorRegistry())
    fired = [
        det2.run_cycle(now=T0 + t * STEP + 5).results[plain.name][0].anomalous
        for t in range(3 * DAY + 530, 3 * DAY + 600, 5)
    ]
    assert any(fired)  # without the seasonal history, the same ramp is an "incident"


def test_a_failed_history_fetch_scores_without_the_profile_and_says_so(settings, caplog):
    x = history()
    t = 3 * DAY + 600
    source = ArraySource(x, fail_before=T0 + (t - 600) * STEP)
    registry = CollectorRegistry()
    det = Detector(settings, queries=[QUERY], source=source, registry=registry)
    with caplog.at_level(logging.WARNING, logger="aiops.detector"):
        results = run_at(det, t)
    assert set(results) == {"shop", "blog"}
    assert all(r.status == "ok" for r in results.values())
    assert "seasonal history unavailable" in caplog.text
    errors = registry.get_sample_value(
        "aiops_detector_query_errors_total", {"query": QUERY.name, "kind": "timeout"}
    )
    assert errors == 1


def test_weekly_slices_are_fetched_and_give_the_profile_of_the_whole_history(settings):
    """For a query with series the retrain found weekly, the slices one, two and three
    weeks back are fetched too: they are the history's own, and with the stored choice
    the live features use the profile a backtest over the whole history uses."""
    x = history(days=22)
    source = ArraySource(x)
    spec = feature_spec(QUERY, settings, STEP, weekly=True)
    assert spec.periods == (DAY, WEEK)
    t = 21 * DAY + 600
    batch = window_at(source, t, settings)
    past = SeasonalHistory(source).slices(QUERY, batch, spec)
    full = x[:, : t + 1]
    width = batch.values.shape[1]
    want = np.concatenate([past_slices(full, DAY, 3), past_slices(full, WEEK, 3)])
    np.testing.assert_array_equal(past, want[:, :, -(width + 2) :])
    assert np.isfinite(past[3:]).any()
    weekly = seasonal_profile(batch.values, past[3:])
    np.testing.assert_array_equal(weekly, seasonal_profile(full, want[3:])[:, -width:])
    # the same choice of profile, and the same use of it, at the newest point
    offline = compute_features(full, spec)
    live = compute_features(batch.values, spec, past, offline.extra["weekly"][:, -1] > 0)
    for name in ("weekly", "seasonal"):
        np.testing.assert_allclose(live.extra[name][:, -1], offline.extra[name][:, -1], rtol=1e-9)


def shop_weeks(days: int = 28, seed: int = 5) -> np.ndarray:
    """Two shops: busy 09:00–17:00 on weekdays, quiet all weekend (40 % of a weekday
    night); the first week starts on a Monday."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    phase, dow = t % DAY, (t // DAY) % 7
    peak = np.where((phase >= 540) & (phase < 1020), 1.6, 1.0)
    level = np.where(dow >= 5, 0.4, peak)
    base = np.stack([100.0 * level, 40.0 * level])
    return base * (1 + rng.normal(0, 0.01, base.shape))


def test_a_series_the_retrain_found_weekly_keeps_its_quiet_weekend_quiet_live(settings):
    """Saturday 10:00 in the fourth week: the daily profile (Wednesday to Friday) expects
    the weekday peak, the weekly one the quiet weekend. The live detector takes the
    weekly profile for the series whose trained model says so, and only for them."""
    from aiops.core.series import series_key
    from detector.scoring import BaselineModelProvider

    x = shop_weeks()
    t = 3 * WEEK + 5 * DAY + 600  # Saturday 10:00, week four

    class Trained(BaselineModelProvider):
        def weekly(self, name: str) -> dict[str, bool]:
            return {
                series_key(name, {"app": "shop"}): True,
                series_key(name, {"app": "blog"}): False,
            }

    def cycle(provider) -> dict:
        det = Detector(
            settings,
            queries=[QUERY],
            source=ArraySource(x),
            provider=provider,
            registry=CollectorRegistry(),
        )
        return {"now": run_at(det, t)}

    plain = cycle(BaselineModelProvider(refit_seconds=3600))["now"]
    trained = cycle(Trained(refit_seconds=3600))["now"]
    # the daily profile calls the quiet Saturday morning an incident (both shops)...
    assert plain["shop"].anomalous and plain["blog"].anomalous
    # ...the weekly one, where the retrain chose it, does not
    assert not trained["shop"].anomalous
    assert trained["blog"].anomalous
