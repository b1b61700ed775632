"""The labelled SLO incident suite: the generator, the scoring rules, and the detector's floors.

The floors sit a little below what the shipped detector measured when the suite was
written (``python bench/incidents.py`` prints the tables): a change that loses
incidents or adds false alarms fails here; one that does better should raise them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from aiops.core.settings import load_settings
from detector.explain import REASONS
from training.incidents import (
    HISTORY,
    N_POINTS,
    SPECS,
    IncidentCase,
    case_results,
    counter_values,
    generate,
    histogram_quantile,
    incident_cases,
    prometheus_rate,
    score_case,
    summarise,
)

#: reason → (recall floor, precision floor)
FLOORS: dict[str, tuple[float, float]] = {
    "level_shift": (0.85, 0.75),
    "volatility_spike": (0.85, 0.8),
    # 5 of 6 since the expected band (issue 18): checkouts_slow_bleed, a noisy low count
    # bleeding 40 % over two hours, stays inside a band that follows it down
    "trend_break": (0.8, 0.8),
    "percent_change": (0.85, 0.8),
    # a spike's false alarms are the 2-3 minute blips of other cases: shown, never paged
    "spike": (0.85, 0.6),
}
OVERALL_RECALL = 0.95  # any reason, inside the window
OVERALL_PRECISION = 0.8
#: Look-alikes allowed to fire with a reason that pages (any but spike), of 11.
MAX_LOOKALIKES_FIRING = 1
LOOKBACK_ROWS = 360  # the live detector's default 6 h at a 60 s step


@pytest.fixture(scope="module")
def cases() -> list[IncidentCase]:
    return incident_cases()


@pytest.fixture(scope="module")
def per_case(cases: list[IncidentCase]) -> pd.DataFrame:
    return case_results(cases, load_settings(metrics=None, config=None))


@pytest.fixture(scope="module")
def summary(per_case: pd.DataFrame) -> pd.DataFrame:
    return summarise(per_case).set_index("reason")


def _show(per_case: pd.DataFrame) -> str:
    cols = ["name", "detected", "reason_ok", "reasons_seen", "false_onsets", "false_reasons"]
    return "\n" + per_case[cols].to_string()


# ------------------------------------------------------------------------ the generator


def test_generation_is_deterministic_given_the_seed():
    spec = SPECS[0]
    a, b = generate(spec), generate(spec)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.timestamps.equals(b.timestamps)
    other = generate(dataclasses.replace(spec, seed=spec.seed + 1000))
    assert not np.allclose(a.values, other.values, equal_nan=True)


def test_names_and_seeds_are_unique():
    assert len({s.name for s in SPECS}) == len(SPECS)
    assert len({s.seed for s in SPECS}) == len(SPECS)


def test_every_reason_has_six_incidents_and_there_are_six_lookalikes(cases):
    expected = [c.expected for c in cases]
    for reason in REASONS:
        assert expected.count(reason) >= 6, reason
    assert set(expected) == {*REASONS, None}
    assert expected.count(None) >= 6


def test_windows_lie_inside_the_series_after_a_full_lookback(cases):
    for c in cases:
        assert len(c.values) == len(c.timestamps) == HISTORY + N_POINTS
        assert c.history == HISTORY and len(c.judged) == N_POINTS
        assert (np.diff(c.timestamps.asi8) == 60 * 10**9).all()
        if c.expected is None:
            assert c.window is None, c.name
        else:
            start, end = c.window
            assert LOOKBACK_ROWS <= start < end <= N_POINTS, c.name


def test_series_look_like_their_metric(cases):
    for c in cases:
        v = c.judged[np.isfinite(c.judged)]
        assert len(v) >= 0.95 * N_POINTS, c.name
        if c.metric == "success_rate":
            assert ((v > 0.9) & (v <= 1.0)).all(), c.name
            if c.expected is None:
                assert 0.995 <= np.median(v) <= 0.9995, c.name
        elif c.metric == "latency_p99":
            assert ((v > 0.05) & (v < 10.0)).all(), c.name
        else:
            assert (v >= 0).all(), c.name
    # the suite holds scrape gaps and the direction of each metric is the catalogue's
    assert any(np.isnan(c.values).any() for c in cases)
    assert {c.direction for c in cases} == {"up", "down", "both"}


def test_rate_is_reset_aware_and_gaps_give_nan():
    rng = np.random.default_rng(0)
    inc = np.full((1, 4 * 29 + 8), 3)  # 3 events per 15 s scrape: 0.2/s
    up = np.ones(inc.shape[1], dtype=bool)
    plain = prometheus_rate(counter_values(inc, [], rng), up, 30)
    reset = prometheus_rate(counter_values(inc, [50], rng), up, 30)
    np.testing.assert_allclose(plain, 0.2)
    np.testing.assert_allclose(reset, 0.2)  # no negative rate, no spike
    up[40:56] = False  # 4 minutes without a scrape
    gap = prometheus_rate(counter_values(inc, [], rng), up, 30)
    assert np.isnan(gap).any() and np.nanmax(np.abs(gap - 0.2)) < 1e-9


def test_histogram_quantile_interpolates_inside_the_bucket():
    # cumulative rates for le = 0.1, 0.5, +Inf: 50 % below 0.1, 100 % below 0.5
    rates = np.array([[5.0], [10.0], [10.0]])
    assert histogram_quantile(0.75, rates, (0.1, 0.5))[0] == pytest.approx(0.3)
    assert histogram_quantile(0.25, rates, (0.1, 0.5))[0] == pytest.approx(0.05)


# ------------------------------------------------------------------- the scoring rules


def _case(window: tuple[int, int] | None, expected: str | None) -> IncidentCase:
    ts = pd.date_range("2024-03-04", periods=200, freq="60s")
    return IncidentCase("t", "latency_p99", "up", ts, np.ones(200), window, expected, 0, history=0)


def _frame(episodes: dict[tuple[int, int], str]) -> pd.DataFrame:
    anomalous = np.zeros(200, dtype=int)
    reasons = np.full(200, "", dtype=object)
    for (a, b), why in episodes.items():
        anomalous[a:b] = 1
        reasons[a:b] = why
    return pd.DataFrame({"anomalous": anomalous, "reasons": reasons})


def test_scoring_detection_reason_delay_and_false_alarms():
    case = _case((100, 120), "level_shift")
    frame = _frame(
        {
            (30, 35): "trend_break",  # before the warm-up: not counted
            (60, 63): "volatility_spike",  # a false alarm
            (104, 140): "level_shift;percent_change",  # the incident, outlasting its window
            (170, 172): "level_shift",  # a false alarm after it
        }
    )
    row = score_case(case, frame, warmup=50)
    assert row["detected"] and row["reason_ok"]
    assert row["first_delay_min"] == 4.0
    assert row["reasons_seen"] == "level_shift;percent_change"
    assert row["false_alarms"] == 2 and row["false_onsets"] == "60 170"
    assert row["false_reasons"] == "level_shift;volatility_spike"
    assert row["unexplained"] == 0


def test_scoring_wrong_reason_late_detection_and_lookalikes():
    wrong = score_case(_case((100, 120), "trend_break"), _frame({(110, 115): "level_shift"}), 50)
    assert wrong["detected"] and not wrong["reason_ok"]
    late = score_case(_case((100, 120), "level_shift"), _frame({(124, 130): "level_shift"}), 50)
    assert late["detected"]  # within the tolerance after the window
    missed = score_case(_case((100, 120), "level_shift"), _frame({(130, 131): "level_shift"}), 50)
    assert not missed["detected"] and missed["false_alarms"] == 1
    quiet = score_case(_case(None, None), _frame({(40, 45): "level_shift"}), 50)
    assert quiet["false_alarms"] == 0
    fired = score_case(_case(None, None), _frame({(40, 60): "level_shift"}), 50)
    assert fired["false_alarms"] == 1 and fired["false_onsets"] == "50"


def test_summary_counts_precision_and_recall_per_reason():
    per_case = pd.DataFrame(
        [
            {"expected": "level_shift", "detected": True, "reason_ok": True,
             "false_alarms": 0, "false_reasons": ""},
            {"expected": "level_shift", "detected": True, "reason_ok": False,
             "false_alarms": 1, "false_reasons": "trend_break"},
            {"expected": "", "detected": False, "reason_ok": False,
             "false_alarms": 1, "false_reasons": "level_shift;trend_break"},
        ]
    )  # fmt: skip
    s = summarise(per_case).set_index("reason")
    assert s.loc["level_shift", ["positives", "tp", "fp"]].tolist() == [2, 1, 1]
    assert s.loc["level_shift", "recall"] == 0.5 and s.loc["level_shift", "precision"] == 0.5
    assert s.loc["trend_break", "fp"] == 2 and s.loc["trend_break", "negatives_fired"] == 1
    assert s.loc["overall", ["detected", "fp", "negatives_fired"]].tolist() == [2, 2, 1]
    assert s.loc["overall", "precision"] == 0.5


# -------------------------------------------------------------- the detector's floors


@pytest.mark.parametrize("reason", REASONS)
def test_recall_per_reason(summary, per_case, reason):
    floor = FLOORS[reason][0]
    assert summary.loc[reason, "recall"] >= floor, _show(per_case)


@pytest.mark.parametrize("reason", REASONS)
def test_precision_per_reason(summary, per_case, reason):
    floor = FLOORS[reason][1]
    assert summary.loc[reason, "precision"] >= floor, _show(per_case)


def test_overall_recall_and_precision(summary, per_case):
    assert summary.loc["overall", "recall"] >= OVERALL_RECALL, _show(per_case)
    assert summary.loc["overall", "precision"] >= OVERALL_PRECISION, _show(per_case)


def test_lookalikes_stay_quiet(per_case):
    """A look-alike may read ``spike`` (a deploy blip of two or three minutes is one: the
    verdict shows it, the rules do not page on it and no policy acts on it by default);
    no other reason."""
    lookalikes = per_case[per_case["expected"] == ""]
    fired = lookalikes[lookalikes["false_alarms"] > 0]
    paging = fired[fired["false_reasons"].map(lambda r: bool(set(r.split(";")) - {"spike", ""}))]
    assert len(paging) <= MAX_LOOKALIKES_FIRING, _show(fired)
    assert len(fired) <= 3, _show(fired)


def test_every_anomalous_row_carries_a_reason(per_case):
    assert (per_case["unexplained"] == 0).all(), _show(per_case)
