"""Episodes end when the data is back inside its expected band for a few points
(``AIOPS_RESOLVE_POINTS``), not when the window statistics have decayed.

Before, a short excursion kept a series in alarm for about its longest window plus
the baseline's catch-up: on real production KPIs 7 % of normal time was in alarm.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aiops.core.settings import load_settings
from detector.features import FeatureSpec
from detector.verdict import Thresholds
from training.backtest import replay

SPEC = FeatureSpec(step=60.0, baseline=300 * 60.0)
START, END = 700, 760  # a level shift of 9 sds for an hour, then back


def shifted(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1100)
    x = 100 + 5 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, len(t))
    x[START:END] += 9
    return x


def episode_around(anomalous: np.ndarray, at: int) -> tuple[int, int]:
    """[first, last] row of the episode that holds row ``at``."""
    assert anomalous[at], "the shift is not flagged"
    first = at
    while first > 0 and anomalous[first - 1]:
        first -= 1
    last = at
    while last + 1 < len(anomalous) and anomalous[last + 1]:
        last += 1
    return first, last


def burst(seed: int) -> np.ndarray:
    """A quarter of an hour of wild noise (8 sds) on a quiet daily series, then calm."""
    rng = np.random.default_rng(seed)
    t = np.arange(1100)
    x = 100 + 5 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, len(t))
    x[BURST : BURST + 15] += rng.normal(0, 8, 15)
    return x


BURST = 700


def back_at(r, points: int, z: float = 3.0) -> int:
    """The first row after the burst with the last ``points`` points inside the band."""
    f = r.features
    # inside the band now and inside the band of one longest window earlier
    inside = (np.abs(f.band_z[0]) < z) & (np.nan_to_num(np.abs(f.held_z[0]), nan=0.0) < z)
    t = BURST + 15
    while not inside[t - points + 1 : t + 1].all():
        t += 1
    return t


def alarm_rows(r) -> np.ndarray:
    """The anomalous rows from the burst on (the next hour)."""
    return np.nonzero(r.anomalous[0, BURST : BURST + 60])[0] + BURST


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("points", [3, 5])
def test_an_episode_ends_when_the_data_is_back_for_its_resolve_points(seed, points):
    r = replay(burst(seed), SPEC, Thresholds(resolve_points=points), "both")
    rows = alarm_rows(r)
    assert len(rows) and rows[0] < BURST + 8, rows  # the burst is flagged
    back = back_at(r, points)
    assert BURST + 5 <= rows[-1] < back, (rows, back)  # and the alarm ends as it is back
    assert not r.anomalous[0, back : back + 30].any()


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_before_the_rule_the_windows_kept_the_alarm_long_after_the_data_was_back(seed):
    """What the rule changes: without it (``AIOPS_RESOLVE_POINTS=0``) the 15-minute
    dispersion still holds the burst and hysteresis (``AIOPS_RESOLVE_RATIO`` 0.75) keeps
    the series in alarm."""
    held = replay(burst(seed), SPEC, Thresholds(resolve_points=0, resolve_ratio=0.75), "both")
    rows = alarm_rows(held)
    assert len(rows) and rows[-1] > back_at(held, 3) + 3, rows


def test_the_point_after_a_spike_does_not_hold_the_anomaly_without_hysteresis():
    """The default (``AIOPS_RESOLVE_RATIO`` 1): a spike of 30 sds followed by points 6 sds
    out (outside the band, short of a spike) is an anomaly of the spike's rows only;
    with hysteresis (0.75) the same points hold it."""
    rng = np.random.default_rng(7)
    t = np.arange(1100)
    x = 100 + 5 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, len(t))
    x[BURST] += 30
    x[BURST + 1 : BURST + 4] += 6
    plain = replay(x, SPEC, Thresholds(), "both")
    assert plain.anomalous[0, BURST]
    assert not plain.anomalous[0, BURST + 1 : BURST + 60].any()
    held = replay(x, SPEC, Thresholds(resolve_ratio=0.75), "both")
    assert held.anomalous[0, BURST : BURST + 3].all()


def test_a_shift_far_outside_the_band_stays_one_anomaly_while_its_windows_fill():
    """Without hysteresis the points of an 18-sd shift hold the anomaly its first points
    start (as spike) until level_shift names it: one episode, not a spike and a shift."""
    x = shifted()
    x[START:END] += 9  # 18 sds
    r = replay(x, SPEC, Thresholds(), "both")
    first, last = episode_around(r.anomalous[0], START + 15)
    assert first == START and last >= START + 40, (first, last)


def test_the_shipped_default_and_its_setting():
    s = load_settings(metrics=None, config=None)
    assert s.resolve_ratio == 1.0 and not Thresholds.from_settings(s).hysteresis
    assert Thresholds.from_settings(load_settings(resolve_ratio=0.75)).hysteresis
    assert s.resolve_points == 2
    assert Thresholds.from_settings(s).resolve_points == 2
    assert Thresholds.from_settings(s).relaxed().resolve_points == 2
    off = load_settings(metrics=None, config=None, resolve_points=0)
    assert Thresholds.from_settings(off).resolve_points == 0


def test_a_gap_is_not_inside_the_band():
    """Missing points do not end an episode: the data is not known to be back."""
    x = shifted()
    x[END - 10 : END] = np.nan  # the scrape fails for the last ten minutes of the shift
    r = replay(x, SPEC, replace(Thresholds(), resolve_points=3), "both")
    _, last = episode_around(r.anomalous[0], START + 15)
    assert last >= START + 40, last  # not ended by the hole itself
