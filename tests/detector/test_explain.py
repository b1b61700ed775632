"""Explainers: table-driven cases (series → expected reasons) and the direction rule."""

from __future__ import annotations

import numpy as np
import pytest

from detector.explain import REASONS, default_explainers, evaluate, reasons_at
from detector.features import FeatureSpec, compute_features

T = 361  # 6 hours at 1-minute steps
SPEC = FeatureSpec(step=60.0, baseline=300 * 60.0)


def healthy(seed: int, level: float = 100.0, noise: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = level + rng.normal(0, noise, T)
    x[1:] = (x[1:] + x[:-1]) / 2  # neighbouring points overlap, like rate()[2m]
    return x


def level_shift(x: np.ndarray) -> np.ndarray:
    x[-30:] += 8
    return x


def volatility(x: np.ndarray) -> np.ndarray:
    x[-15:] += np.random.default_rng(7).normal(0, 4, 15)
    return x


def ramp(x: np.ndarray) -> np.ndarray:
    x[-60:] += np.linspace(0, 8, 60)
    return x


def noisy_drop(_: np.ndarray) -> np.ndarray:
    x = healthy(3, level=100.0, noise=22.0)
    x[-20:] -= 40
    return x


def poisson_kpi_halves(_: np.ndarray) -> np.ndarray:
    """Checkouts per second from ~7 per 2-minute window: very noisy, then 60% fewer."""
    rng = np.random.default_rng(11)
    lam = np.full(T, 0.06 * 120)
    lam[-25:] *= 0.4
    counts = rng.poisson(lam).astype(float)
    counts[1:] = (counts[1:] + counts[:-1]) / 2
    return counts / 120


def big_drop(x: np.ndarray) -> np.ndarray:
    x[-20:] *= 0.4
    return x


def blip(x: np.ndarray) -> np.ndarray:
    x[-10:-7] += 10  # a deploy blip, over since 7 minutes
    return x


def slow_drift(x: np.ndarray) -> np.ndarray:
    return x + np.linspace(0, 1.0, T)


CASES = [
    ("healthy", lambda x: x, "both", set()),
    ("level shift up", level_shift, "both", {"level_shift"}),
    ("volatility spike", volatility, "both", {"volatility_spike"}),
    ("trend break", ramp, "both", {"trend_break"}),
    ("noisy KPI drops 40%", noisy_drop, "both", {"percent_change"}),
    ("Poisson KPI drops 60%", poisson_kpi_halves, "down", {"percent_change"}),
    ("60% drop of a quiet KPI", big_drop, "both", {"level_shift", "percent_change"}),
    ("3-minute blip, over", blip, "both", set()),
    ("slow drift inside the noise", slow_drift, "both", set()),
    # direction: a success rate (down) rising or latency (up) falling is not bad
    ("level shift up, direction down", level_shift, "down", set()),
    ("level shift up, direction up", level_shift, "up", {"level_shift"}),
    ("60% drop, direction up", big_drop, "up", set()),
    ("60% drop, direction down", big_drop, "down", {"level_shift", "percent_change"}),
    ("ramp up, direction down", ramp, "down", set()),
    ("volatility ignores direction", volatility, "down", {"volatility_spike"}),
]


def reasons_of(x: np.ndarray, direction: str, **thresholds: float) -> list:
    f = compute_features(x[None, :], SPEC).take(slice(-1, None))
    th = {"z_thresh": 3.0, "vol_mult": 2.0, "pct_thresh": 0.3, **thresholds}
    ev = evaluate(default_explainers(direction=direction, **th), f)
    return reasons_at(ev, f.windows, 0, 0)


@pytest.mark.parametrize(
    ("name", "make", "direction", "expected"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_explainer_cases(name, make, direction, expected, seed):
    x = make(healthy(seed))
    got = reasons_of(x, direction)
    assert {r.reason for r in got} == expected
    for r in got:
        assert r.reason in REASONS
        assert r.window in ("5m", "15m", "1h")
        assert np.isfinite(r.zscore) and np.isfinite(r.delta)
        assert r.threshold > 0


def test_reason_carries_window_zscore_delta_threshold():
    (r,) = reasons_of(level_shift(healthy(1)), "up")
    assert r.reason == "level_shift"
    assert r.window in ("5m", "15m")  # the strongest window holds only the new level
    assert r.zscore > 3.0 and r.threshold == 3.0
    assert 6.0 < r.delta < 10.0  # the injected shift is 8


def test_thresholds_come_from_settings():
    x = level_shift(healthy(1))
    assert reasons_of(x, "up", z_thresh=50.0) == []
    x = volatility(healthy(1))
    assert reasons_of(x, "both", vol_mult=10.0) == []
    x = big_drop(healthy(1))
    assert {r.reason for r in reasons_of(x, "down", pct_thresh=0.9)} == {"level_shift"}


def test_too_short_series_is_not_ready():
    x = healthy(1)[: SPEC.longest + 5]
    f = compute_features(x[None, :], SPEC)
    assert not f.ready[0, -1]
    assert reasons_of(level_shift(x.copy()), "both") == []


def test_nan_gaps_do_not_crash_and_shift_is_still_found():
    x = level_shift(healthy(2))
    x[100:140] = np.nan  # a scrape outage in the baseline
    x[-12] = np.nan
    got = reasons_of(x, "up")
    assert [r.reason for r in got] == ["level_shift"]


def test_all_nan_series_is_not_ready():
    f = compute_features(np.full((1, T), np.nan), SPEC)
    assert not f.ready.any()


def test_constant_series_is_quiet_then_a_step_is_a_level_shift():
    x = np.full(T, 0.999)
    assert reasons_of(x.copy(), "down") == []
    f = compute_features(x[None, :], SPEC)
    assert np.all(np.isfinite(f.z["5m"][0, SPEC.warmup_points :]))
    x[-20:] = 0.95  # a success rate that was flat drops
    assert "level_shift" in {r.reason for r in reasons_of(x, "down")}
