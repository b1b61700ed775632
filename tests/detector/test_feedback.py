"""Operators teach the detector: a "not an incident" silences the same magnitude of that
reason on that series, bounded and decaying; a "real incident" protects its strength."""

from __future__ import annotations

import numpy as np
import pytest

from detector.features import FeatureSpec
from detector.feedback import (
    MARGIN,
    PROTECT,
    ReasonSeen,
    Verdict,
    floor_at,
    floor_columns,
    floors_at,
    seen,
)
from detector.verdict import Thresholds
from training.backtest import replay

STEP = 300.0
DAY = int(86400 / STEP)
HALF_LIFE = 30 * 86400.0


def harmless_pattern() -> tuple[np.ndarray, list[int], int, int]:
    """30 days at 5-minute steps: a 12-sd spike every other day at the same hour (a batch
    job nobody cares about), one 25-sd spike and one 3-hour level shift of 5 sds."""
    x = 100 + np.random.default_rng(5).normal(0, 1.0, 30 * DAY)
    spikes = [d * DAY + 100 for d in range(6, 30, 2)]
    for at in spikes:
        x[at] += 12.0
    big, shift = 21 * DAY + 150, 25 * DAY + 200
    x[big] += 25.0
    x[shift : shift + 36] += 5.0
    return x, spikes, big, shift


def reasons_at(r, t: int) -> list[dict]:
    """The reasons of the replay's verdict at ``t`` as the detector reports them."""
    out = []
    for ev in r.evidence:
        if ev.fired[0, t]:
            threshold = np.broadcast_to(ev.threshold, r.anomalous.shape)[0, t]
            out.append(
                {"reason": ev.reason, "zscore": float(ev.zscore[0, t]), "threshold": threshold}
            )
    return out


def test_one_false_alarm_silences_a_recurring_pattern_a_larger_or_other_anomaly_still_alarms():
    x, spikes, big, shift = harmless_pattern()
    spec = FeatureSpec(step=STEP)
    before = replay(x, spec, Thresholds(), "both")
    # without feedback the batch job's spike alarms (nearly) every time
    assert sum(before.anomalous[0, s] for s in spikes) >= len(spikes) - 1
    first = spikes[0]
    reasons = seen(reasons_at(before, first))
    assert [r.reason for r in reasons] == ["spike"]
    times = np.arange(x.size) * STEP
    # "not an incident", an hour after the first one
    verdict = Verdict("bench", "false_alarm", times[first] + 3600, reasons)
    floors = floor_columns([verdict], ["bench"], times, max_raise=3.0, half_life=HALF_LIFE)
    after = replay(x, spec, Thresholds(), "both", floors=floors)
    flagged = [bool(after.anomalous[0, s]) for s in spikes]
    assert flagged[0]  # a verdict counts from when it was given
    # the next two weeks of the same spike are silent ...
    assert not any(flagged[1:8]), flagged
    # ... and the floor decays: three weeks on, the same spike alarms again
    assert flagged[-1], flagged
    # a spike twice as large, and a level shift (another reason), still alarm
    assert after.anomalous[0, big]
    assert after.anomalous[0, shift : shift + 12].any()
    assert "level_shift" in {x for t in range(shift, shift + 12) for x in after.reasons(0, t)}
    # the verdict touched only this series: another key gets no floor
    assert floor_columns([verdict], ["other"], times, max_raise=3.0, half_life=HALF_LIFE) == {}


def test_the_floor_is_bounded_decays_and_a_confirmed_incident_caps_it():
    huge = ReasonSeen("level_shift", statistic=60.0, threshold=3.0)
    fa = Verdict("s", "false_alarm", 1000.0, (huge,))
    kw = {"max_raise": 3.0, "half_life": HALF_LIFE}
    floor, base, cap = floor_at([fa], "level_shift", 1000.0, **kw)
    assert floor == pytest.approx(9.0) and base == 3.0 and cap is None  # 3 × the threshold
    assert floor_at([fa], "level_shift", 999.0, **kw)[0] == 0.0  # not before it was given
    assert floor_at([fa], "spike", 1000.0, **kw)[0] == 0.0  # another reason: untouched
    # halfway back to the threshold after one half-life, nearly there after five
    assert floor_at([fa], "level_shift", 1000.0 + HALF_LIFE, **kw)[0] == pytest.approx(6.0)
    assert floor_at([fa], "level_shift", 1000.0 + 5 * HALF_LIFE, **kw)[0] < 3.2
    # a small false alarm raises by its own size only
    small = Verdict("s", "false_alarm", 1000.0, (ReasonSeen("level_shift", 4.0, 3.0),))
    assert floor_at([small], "level_shift", 1000.0, **kw)[0] == pytest.approx(4.0 * MARGIN)
    # a confirmed incident of 5 keeps every floor below it
    real = Verdict("s", "incident", 500.0, (ReasonSeen("level_shift", 5.0, 3.0),))
    floor, _, cap = floor_at([fa, real], "level_shift", 1000.0, **kw)
    assert cap == pytest.approx(PROTECT * 5.0) and floor == pytest.approx(PROTECT * 5.0)
    # the effects table lists what is in force
    (effect,) = floors_at([fa, real], 1000.0, **kw)
    assert effect.series == "s" and effect.false_alarms == 1
    assert effect.raise_factor == pytest.approx(PROTECT * 5.0 / 3.0)


def test_reasons_without_a_statistic_count_for_nothing_and_a_bad_verdict_is_refused():
    got = seen(
        [
            {"reason": "spike", "zscore": -9.0, "threshold": 7.0},
            {"reason": "spike", "zscore": 11.0, "threshold": 7.0},  # the strongest counts
            {"reason": "level_shift", "zscore": None, "threshold": 3.0},
            {"reason": "trend_break", "zscore": float("nan"), "threshold": 3.0},
        ]
    )
    assert got == (ReasonSeen("spike", 11.0, 7.0),)
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("s", "meh", 0.0, got)
