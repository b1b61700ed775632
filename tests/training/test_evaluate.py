"""The backtest summary: hand-counted found windows, delays, false alarms and reasons."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from training.evaluate import COLUMNS, format_duration, render_summary, summarise
from training.nab import nab_scores


def frame(n: int, freq: str, detections: dict[int, str]) -> pd.DataFrame:
    """A backtest result with detections (row -> reasons) and one-row episodes."""
    score = np.zeros(n)
    reasons = [""] * n
    for row, why in detections.items():
        score[row] = 1.0 + row / n
        reasons[row] = why
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=n, freq=freq),
            "value": np.arange(n, dtype=float),
            "score": np.full(n, 0.5),
            "anomaly_score": score,
            "anomalous": (score > 0).astype(int),
            "reasons": reasons,
            "baseline": np.nan,
            "band_low": np.nan,
            "band_high": np.nan,
        }
    )


def windows_at(f: pd.DataFrame, spans: list[tuple[int, int]]) -> list:
    return [(f["timestamp"].iloc[a], f["timestamp"].iloc[b]) for a, b in spans]


@pytest.fixture
def case() -> tuple[dict, dict]:
    # a: 100 one-minute rows, 15 in probation, windows over rows 40..49, 70..79, 90..95
    a = frame(
        100,
        "1min",
        {
            5: "level_shift",  # in probation: not a detection
            20: "level_shift",  # false alarm
            43: "level_shift;percent_change",  # finds window 1, 3 rows late
            46: "",  # second detection in window 1, unexplained
            60: "",  # false alarm, unexplained
            72: "trend_break",  # finds window 2, 2 rows late
        },
    )
    # b: 200 five-minute rows, 30 in probation, no labelled window
    b = frame(200, "5min", {10: "volatility_spike", 100: "volatility_spike"})
    frames = {"cat/a.csv": a, "cat/b.csv": b}
    windows = {"cat/a.csv": windows_at(a, [(40, 49), (70, 79), (90, 95)])}
    return frames, windows


def by_file(df: pd.DataFrame) -> dict[str, dict]:
    return {row["file"]: row for row in df.to_dict("records")}


def test_columns_and_row_order(case):
    df = summarise(*case)
    assert list(df.columns) == COLUMNS
    assert list(df["file"]) == ["cat/a.csv", "cat/b.csv", "overall"]


def test_file_with_windows(case):
    a = by_file(summarise(*case))["cat/a.csv"]
    assert (a["rows"], a["windows"], a["found"], a["detections"]) == (100, 3, 2, 5)
    assert a["first_delay_rows"] == 2.5  # median of 3 and 2
    assert a["first_delay"] == "2m30s"
    assert a["fp_per_1k"] == pytest.approx(1000 * 2 / 85)
    assert a["unexplained"] == 2
    assert all(math.isnan(a[c]) for c in ("nab_standard", "nab_low_fp", "nab_low_fn"))


def test_file_without_windows(case):
    b = by_file(summarise(*case))["cat/b.csv"]
    assert (b["rows"], b["windows"], b["found"], b["detections"]) == (200, 0, 0, 1)
    assert math.isnan(b["first_delay_rows"])
    assert b["first_delay"] == ""
    assert b["fp_per_1k"] == pytest.approx(1000 / 170)
    assert b["unexplained"] == 0


def test_overall_pools_files_and_carries_nab_scores(case):
    frames, windows = case
    overall = by_file(summarise(frames, windows))["overall"]
    assert (overall["rows"], overall["windows"], overall["found"]) == (300, 3, 2)
    assert (overall["detections"], overall["unexplained"]) == (6, 2)
    assert overall["first_delay_rows"] == 2.5
    assert overall["fp_per_1k"] == pytest.approx(1000 * 3 / 255)
    nab = nab_scores(
        {k: f["anomaly_score"].to_numpy() for k, f in frames.items()},
        {k: f["timestamp"] for k, f in frames.items()},
        windows,
    )
    assert overall["nab_standard"] == pytest.approx(nab["standard"].score)
    assert overall["nab_low_fp"] == pytest.approx(nab["reward_low_FP_rate"].score)
    assert overall["nab_low_fn"] == pytest.approx(nab["reward_low_FN_rate"].score)
    assert 0 < overall["nab_standard"] < 100


def test_detections_at_each_window_start_score_100():
    f = frame(300, "1h", {100: "level_shift", 200: "percent_change"})
    windows = {"x.csv": windows_at(f, [(100, 120), (200, 230)])}
    overall = by_file(summarise({"x.csv": f}, windows))["overall"]
    assert (overall["found"], overall["first_delay_rows"], overall["first_delay"]) == (2, 0.0, "0s")
    assert overall["fp_per_1k"] == 0.0
    for column in ("nab_standard", "nab_low_fp", "nab_low_fn"):
        assert overall[column] == pytest.approx(100.0), column


def test_delay_is_in_time_not_rows():
    f = frame(100, "15min", {44: "level_shift"})  # 4 rows of 15 minutes into the window
    overall = by_file(summarise({"x.csv": f}, {"x.csv": windows_at(f, [(40, 60)])}))["overall"]
    assert (overall["first_delay_rows"], overall["first_delay"]) == (4.0, "1h")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (pd.Timedelta(seconds=45), "45s"),
        (pd.Timedelta(minutes=35), "35m"),
        (pd.Timedelta(minutes=2, seconds=30), "2m30s"),
        (pd.Timedelta(hours=2, minutes=5), "2h05m"),
        (pd.Timedelta(hours=3), "3h"),
        (pd.Timedelta(days=3, hours=4, minutes=10), "3d4h"),
        (pd.Timedelta(days=2), "2d"),
        (pd.NaT, ""),
    ],
)
def test_format_duration(delta, text):
    assert format_duration(delta) == text


def test_render_summary(case):
    table = render_summary(summarise(*case))
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(table)
    text = out.getvalue()
    assert table.row_count == 3
    assert "fp per 1k" in text
    assert "23.53" in text  # cat/a.csv false alarms per 1,000 scored rows
    assert "2m30s" in text
    overall_line = next(line for line in text.splitlines() if "overall" in line)
    nab = by_file(summarise(*case))["overall"]["nab_standard"]
    assert f"{nab:.1f}" in overall_line
