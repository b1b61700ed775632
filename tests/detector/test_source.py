"""Placing Prometheus matrix results on the grid: gaps, NaN, duplicates, counter resets."""

from __future__ import annotations

import numpy as np
import pytest

from detector.catalogue import Query
from detector.source import align_end, counter_to_rate, to_batch

START, STEP, N = 1_700_000_000.0, 60.0, 6


def q(**kw) -> Query:
    return Query(name="q", promql="x", **kw)


def test_samples_land_on_their_grid_points_with_gaps_as_nan():
    result = [
        {"metric": {"app": "a"}, "values": [[START, "1"], [START + 120, "3"], [START + 300, "6"]]},
        {"metric": {"app": "b"}, "values": [[START + 60, "NaN"], [START + 240, "+Inf"]]},
    ]
    b = to_batch(q(labels=("app",)), result, START, STEP, N)
    assert b.labels == [{"app": "a"}, {"app": "b"}]
    np.testing.assert_array_equal(b.values[0], [1, np.nan, 3, np.nan, np.nan, 6])
    assert np.isnan(b.values[1]).all()  # NaN and Inf are no data
    assert b.end == START + 300


def test_kept_labels_and_duplicates():
    result = [
        {"metric": {"__name__": "x", "app": "a", "pod": "1"}, "values": [[START, "1"]]},
        {"metric": {"__name__": "x", "app": "a", "pod": "2"}, "values": [[START, "2"]]},
    ]
    b = to_batch(q(labels=("app",)), result, START, STEP, N)
    assert b.labels == [{"app": "a"}]
    assert b.values[0, 0] == 1
    assert b.warnings and "sum by" in b.warnings[0]
    b = to_batch(q(), result, START, STEP, N)  # labels unset: keep all but __name__
    assert b.labels == [{"app": "a", "pod": "1"}, {"app": "a", "pod": "2"}]


def test_empty_result_is_an_empty_batch():
    b = to_batch(q(), [], START, STEP, N)
    assert len(b) == 0 and b.values.shape == (0, N)


def test_counter_resets_are_increases():
    raw = np.array([[100.0, 160.0, 220.0, 10.0, 70.0, np.nan]])
    rate = counter_to_rate(raw, 60.0)
    np.testing.assert_allclose(rate[0, 1:5], [1.0, 1.0, 10 / 60, 1.0])
    assert np.isnan(rate[0, 0]) and np.isnan(rate[0, 5])
    result = [
        {
            "metric": {"app": "a"},
            "values": [
                [START + 60 * i, str(v)] for i, v in enumerate([100, 160, 220, 10, 70, 130])
            ],
        }
    ]
    b = to_batch(q(counter=True), result, START, STEP, N)
    assert (b.values[0, 1:] > 0).all()


@pytest.mark.parametrize(("now", "step", "end"), [(125.0, 60.0, 120.0), (120.0, 60.0, 120.0)])
def test_align_end(now, step, end):
    assert align_end(now, step) == end
