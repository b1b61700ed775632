"""NAB scoring: equal to the shared reference scorer on real NAB files, and hand-checked cases."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from tests.conftest import IN_CI
from training.nab import (
    DEFAULT_PROFILES,
    CostProfile,
    load_profiles,
    load_windows,
    nab_scores,
    probation_rows,
    sigmoid,
)

#: the shared NAB folder beside the checkout (../shared/nab), else the workplace's copy
SHARED = next(
    (
        p
        for p in (
            Path(__file__).resolve().parents[3] / "shared" / "nab",
            Path("/work/shared/nab"),
        )
        if (p / "nab_score.py").exists()
    ),
    Path(__file__).resolve().parents[3] / "shared" / "nab",
)
FILES = [
    "artificialNoAnomaly/art_noisy.csv",
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "artificialWithAnomaly/art_increase_spike_density.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realAdExchange/exchange-4_cpm_results.csv",
]


def require(path: Path) -> Path:
    """The path; a missing one fails in CI and skips elsewhere."""
    if path.exists():
        return path
    message = f"{path} is missing (the shared NAB subset and reference scorer)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_reference", require(SHARED / "nab_score.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(reference: ModuleType) -> dict:
    data = require(SHARED / "data")
    labels = data / "labels" / "combined_windows.json"
    raw_windows = reference.load_windows(str(labels))
    layouts = reference.load_corpus(str(data), raw_windows, FILES)
    return {
        "layouts": layouts,
        "timestamps": {lay.rel_path: lay.timestamps for lay in layouts},
        "windows": load_windows(labels),
    }


def perfect(corpus: dict) -> list[np.ndarray]:
    """1 at the first row of every labelled window, 0 elsewhere."""
    out = []
    for lay in corpus["layouts"]:
        s = np.zeros(lay.n)
        for k in range(lay.n_windows_labelled):
            s[np.flatnonzero(lay.window_of_row == k)[0]] = 1.0
        out.append(s)
    return out


def sparse(corpus: dict, seed: int, rate: float, levels: int | None) -> list[np.ndarray]:
    """Random detections at ``rate`` (scores from ``levels`` distinct values, or continuous),
    plus some inside and just after each window, where TP and cheap-FP values vary most."""
    rng = np.random.default_rng(seed)
    out = []
    for lay in corpus["layouts"]:
        hit = rng.random(lay.n) < rate
        for k in range(lay.n_windows_labelled):
            rows = np.flatnonzero(lay.window_of_row == k)
            hit[rng.choice(rows, 2)] = True
            hit[min(rows[-1] + 1 + int(rng.integers(0, 2 * len(rows))), lay.n - 1)] = True
        values = rng.random(lay.n) if levels is None else rng.integers(1, levels + 1, lay.n)
        out.append(np.where(hit, values, 0.0))
    return out


def compare(reference: ModuleType, corpus: dict, scores: list[np.ndarray]) -> dict:
    expected = reference.evaluate(
        corpus["layouts"], scores, reference.DEFAULT_PROFILES, per_file=True
    )
    ours = nab_scores(
        dict(zip(FILES, scores, strict=True)), corpus["timestamps"], corpus["windows"]
    )
    for profile, want in expected.items():
        got = ours[profile]
        assert got.score == pytest.approx(want["normalised"], abs=1e-6), profile
        assert got.raw == pytest.approx(want["raw"], abs=1e-9), profile
        assert got.null_raw == pytest.approx(want["null_raw"], abs=1e-9), profile
        assert got.threshold == want["threshold"], profile
        assert (got.tp, got.fp, got.fn) == (want["tp"], want["fp"], want["fn"]), profile
        for row in want["files"]:
            assert got.files[row["file"]].raw == pytest.approx(row["raw"], abs=1e-9), row
    return ours


@pytest.mark.parametrize(
    ("seed", "rate", "levels"),
    [(0, 0.002, None), (1, 0.01, None), (2, 0.05, None), (3, 0.01, 3), (4, 0.3, 5), (5, 1.0, None)],
)
def test_equals_reference_on_random_detections(reference, corpus, seed, rate, levels):
    result = compare(reference, corpus, sparse(corpus, seed, rate, levels))
    assert set(result) == set(DEFAULT_PROFILES)


def test_perfect_detector_scores_100(reference, corpus):
    result = compare(reference, corpus, perfect(corpus))
    for profile, res in result.items():
        assert res.score == pytest.approx(100.0, abs=1e-9), profile
        assert res.windows_detected == res.windows == 11, profile


@pytest.mark.parametrize("constant", [0.0, 0.7])
def test_null_detector_scores_0(reference, corpus, constant):
    scores = [np.full(lay.n, constant) for lay in corpus["layouts"]]
    result = compare(reference, corpus, scores)
    for profile, res in result.items():
        assert res.score == pytest.approx(0.0, abs=1e-9), profile


def test_probation_is_15_percent_capped_at_750_rows():
    assert [probation_rows(n) for n in (0, 99, 100, 4032, 5000, 5001, 22000)] == [
        0, 14, 15, 604, 750, 750, 750,
    ]  # fmt: skip


def test_sigmoid_shape():
    values = sigmoid(np.array([-1.0, 0.0, 1.0, 3.0, 3.01, np.inf]))
    assert values[0] == pytest.approx(0.98661, abs=1e-5)
    assert values[1] == 0.0
    assert values[2] == pytest.approx(-0.98661, abs=1e-5)
    assert list(values[4:]) == [-1.0, -1.0]


def tiny(scores: dict[int, float], n: int = 100) -> tuple[dict, dict, dict]:
    """One 100-row file (15 probation rows) with one window over rows 50..59."""
    ts = pd.date_range("2024-01-01", periods=n, freq="1min")
    s = np.zeros(n)
    for row, value in scores.items():
        s[row] = value
    return {"f.csv": s}, {"f.csv": ts}, {"f.csv": [(ts[50], ts[59])]}


def test_hand_computed_detection_values():
    # the last row of the window, a false alarm 11 rows after it and one before it
    result = nab_scores(*tiny({59: 1.0, 70: 1.0, 30: 1.0}))["standard"]
    tp = (2 / (1 + math.exp(-5 * 0.1)) - 1) / (2 / (1 + math.exp(-5)) - 1)
    fp_after = 2 / (1 + math.exp(5 * 11 / 9)) - 1
    assert result.threshold == 1.0
    assert result.raw == pytest.approx(tp + 0.11 * fp_after - 0.11)
    assert (result.tp, result.fp, result.fn) == (1, 2, 9)
    assert result.null_raw == pytest.approx(-1.0)
    assert result.score == pytest.approx(100 * (result.raw + 1) / 2)


def test_only_the_earliest_detection_in_a_window_counts():
    early = nab_scores(*tiny({50: 1.0}))["standard"]
    both = nab_scores(*tiny({50: 1.0, 55: 1.0}))["standard"]
    assert early.raw == pytest.approx(1.0)
    assert both.raw == pytest.approx(early.raw)
    assert both.tp == 2


def test_ties_go_to_the_highest_threshold():
    # the later detection adds nothing: thresholds 2 and 1 tie, the higher one is kept
    result = nab_scores(*tiny({50: 2.0, 55: 1.0}))["standard"]
    assert result.raw == pytest.approx(1.0)
    assert (result.threshold, result.tp) == (2.0, 1)


def test_detections_in_probation_and_nan_scores_are_ignored():
    result = nab_scores(*tiny({10: 5.0, 80: np.nan}))
    assert all(res.score == pytest.approx(0.0) and res.fp == 0 for res in result.values())


def test_tz_aware_timestamps_read_naive_windows_as_utc():
    scores, stamps, windows = tiny({52: 1.0})
    naive = nab_scores(scores, stamps, windows)["standard"]
    aware = nab_scores(scores, {"f.csv": stamps["f.csv"].tz_localize("UTC")}, windows)["standard"]
    assert aware.raw == pytest.approx(naive.raw)
    assert aware.tp == naive.tp == 1


def test_length_mismatch_is_an_error():
    scores, stamps, windows = tiny({})
    with pytest.raises(ValueError, match="rows"):
        nab_scores({"f.csv": scores["f.csv"][:-1]}, stamps, windows)


def test_load_windows_and_profiles(tmp_path):
    windows = tmp_path / "combined_windows.json"
    windows.write_text(
        json.dumps({"a/x.csv": [["2014-02-20 00:00:00.000000", "2014-02-21 00:00:00.000000"],
                                ["2014-02-19 00:00:00.000000", "2014-02-19 06:00:00.000000"]],
                    "a/y.csv": []})
    )  # fmt: skip
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps({"custom": {"CostMatrix": {"tpWeight": 2.0, "fnWeight": 0.5,
                                              "fpWeight": 0.3, "tnWeight": 1.0}}})
    )  # fmt: skip
    loaded = load_windows(windows)
    assert loaded["a/x.csv"][0] == (pd.Timestamp("2014-02-19"), pd.Timestamp("2014-02-19 06:00"))
    assert loaded["a/y.csv"] == []
    assert load_profiles(profiles) == {"custom": CostProfile(tp=2.0, fn=0.5, fp=0.3)}


def test_shared_profiles_json_is_the_default(reference):
    assert load_profiles(require(SHARED / "data" / "config" / "profiles.json")) == DEFAULT_PROFILES
