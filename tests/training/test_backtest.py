"""Streaming replay: no look-ahead, the live verdicts, and the backtest CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from detector.features import FeatureSpec
from detector.verdict import Thresholds, hysteresis
from training.backtest import replay

SPEC = FeatureSpec(step=60.0, baseline=300 * 60.0)


def series(n: int = 1500, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 100 + 5 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, n)
    x[700:760] += 9  # a level shift
    x[1100:1130] += rng.normal(0, 6, 30)  # a volatility spike
    x[400:420] = np.nan  # a gap
    return x


def test_the_first_forest_comes_as_soon_as_there_are_enough_ready_rows():
    """A series whose start is too holey for a forest at the first refit point gets one
    at the first later column with enough ready rows behind it (as live, where a query
    gets its forest at the first cycle with enough baseline rows), not a refit later."""
    from detector.scoring import MIN_FIT_ROWS

    x = series(2000)
    first = SPEC.warmup_points + SPEC.longest + 8
    x[: first + 300] = np.nan  # nothing ready at the first refit point
    x[first + 300 :: 97] = np.nan  # and a hole now and then after it
    r = replay(x, SPEC, Thresholds(), "both", refit_every=500)
    scored = np.flatnonzero(np.isfinite(r.score[0]))
    assert len(scored), "never scored"
    at = scored[0]
    ready_before = np.cumsum(r.features.ready[0])
    # the first column whose rows up to one longest window earlier hold enough ready ones
    want = next(
        t for t in range(first, len(x)) if ready_before[t - SPEC.longest - 1] >= MIN_FIT_ROWS
    )
    assert at == want
    assert at < first + 500  # the old schedule would have waited for the next refit point
    # from there on, every ready column is scored
    assert np.isfinite(r.score[0, at:][r.features.ready[0, at:]]).all()


def test_no_look_ahead_row_by_row_equals_vectorised():
    x = series()
    th = Thresholds()
    full = replay(x, SPEC, th, "both", refit_every=200)
    assert full.anomalous.any()
    rng = np.random.default_rng(0)
    sample = sorted(
        {
            *rng.choice(np.arange(SPEC.warmup_points, len(x)), 25, replace=False),
            *np.nonzero(full.onset[0])[0][:5],
        }
    )
    for t in sample:
        part = replay(x[: t + 1], SPEC, th, "both", refit_every=200)
        assert part.anomalous[0, t] == full.anomalous[0, t], t
        assert part.onset[0, t] == full.onset[0, t], t
        assert part.reasons(0, t) == full.reasons(0, t), t
        np.testing.assert_allclose(part.score[0, t], full.score[0, t], rtol=1e-9, equal_nan=True)
        np.testing.assert_allclose(
            part.features.z["15m"][0, t], full.features.z["15m"][0, t], rtol=1e-7, equal_nan=True
        )


def test_replay_finds_the_incidents_with_reasons():
    x = series()
    r = replay(x, SPEC, Thresholds(), "both")
    onsets = np.nonzero(r.onset[0])[0]
    assert any(700 <= t < 720 for t in onsets), onsets
    assert any(1100 <= t < 1120 for t in onsets), onsets
    t_shift = next(t for t in onsets if 700 <= t < 720)
    assert "level_shift" in r.reasons(0, t_shift)
    t_vol = next(t for t in onsets if 1100 <= t < 1120)
    # its first wild point reads as a spike; the burst reads volatility_spike once the
    # 15-minute window holds enough of it
    assert "spike" in r.reasons(0, t_vol)
    later = [t for t in range(t_vol, t_vol + 20) if r.anomalous[0, t]]
    assert any("volatility_spike" in r.reasons(0, t) for t in later), later
    for t in np.nonzero(r.anomalous[0])[0]:
        assert r.reasons(0, t), f"anomalous row {t} without a reason"


def test_hysteresis_recurrence():
    strict = np.array([[0, 1, 0, 0, 0, 1, 0]], dtype=bool)
    relaxed = np.array([[1, 1, 1, 0, 1, 1, 1]], dtype=bool)
    assert hysteresis(strict, relaxed).astype(int).tolist() == [[0, 1, 1, 0, 0, 1, 1]]


def test_cli_writes_per_row_results(tmp_path):
    x = series(1200)
    ts = pd.date_range("2026-01-01", periods=len(x), freq="1min")
    data = tmp_path / "in" / "sub"
    data.mkdir(parents=True)
    pd.DataFrame({"timestamp": ts, "value": x}).to_csv(data / "svc.csv", index=False)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "aiops", "backtest", str(tmp_path / "in"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = pd.read_csv(out / "sub" / "svc.csv")
    assert list(result.columns[:7]) == [
        "timestamp",
        "value",
        "score",
        "forest_score",
        "anomaly_score",
        "anomalous",
        "reasons",
    ]
    assert len(result) == len(x)
    # the calibrated score is at least 1 exactly on anomalous rows
    scored = result["score"].notna()
    assert ((result["score"] >= 1) == (result["anomalous"] == 1))[scored].all()
    assert result["forest_score"].dropna().between(0, 1).all()
    detections = result[result.anomaly_score > 0]
    assert len(detections) >= 1
    assert detections.reasons.notna().all()
    assert (result.anomalous[result.anomaly_score > 0] == 1).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.csv"], "no such file or folder"),
        (["--direction", "sideways", "x"], "--direction: must be up, down or both"),
        ([], "give a CSV file or folder"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "aiops", "backtest", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_backtest_speed_benchmark_prints_its_figures(tmp_path):
    """bench/backtest_speed.py replays one query's series together and prints rows/s
    per number of series (the figures themselves are the benchmark's, not asserted)."""
    out = tmp_path / "speed.json"
    args = ["--series", "1,3", "--days", "2", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "bench/backtest_speed.py", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "rows/s" in ln]
    assert len(lines) == 2 and "target 50,000" in lines[0]
    import json

    results = json.loads(out.read_text())["results"]
    assert [r["series"] for r in results] == [1, 3]
    assert [r["rows"] for r in results] == [2 * 1440, 3 * 2 * 1440]
    assert all(r["rows_per_s"] > 0 and 0 < r["forest_share"] <= 1 for r in results)
