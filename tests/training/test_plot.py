"""Backtest plots: a PNG of the expected size, with the episodes and windows drawn."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from training.plot import DPI, FIGSIZE, plot_backtest, reason_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI), 4)
REASONS = ["level_shift", "volatility_spike", "trend_break", "percent_change"]


def frame(n: int = 3000, episodes: int = 3, seed: int = 0) -> pd.DataFrame:
    """A daily-cycle series with a gap, a baseline and band, and ``episodes`` detections."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    value = 50 + 10 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, n)
    value[n // 3 : n // 3 + 20] = np.nan
    baseline = pd.Series(value).rolling(100, min_periods=10).median().shift(1).to_numpy()
    anomalous = np.zeros(n, dtype=int)
    score = np.zeros(n)
    reasons = np.full(n, "", dtype=object)
    for k, start in enumerate(np.linspace(n // 5, n - 40, episodes, dtype=int) if episodes else []):
        value[start : start + 30] += 25
        anomalous[start : start + 30] = 1
        score[start] = 1.0 + k
        reasons[start] = ";".join(REASONS[: 1 + k % 3])
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-03-01", periods=n, freq="5min"),
            "value": value,
            "score": rng.random(n),
            "anomaly_score": score,
            "anomalous": anomalous,
            "reasons": reasons,
            "baseline": baseline,
            "band_low": baseline - 8,
            "band_high": baseline + 8,
        }
    )


def read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.shape == SHAPE
    return image


def share(image: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.03) -> float:
    """Fraction of pixels within ``tol`` of colour ``rgb``."""
    return float((np.abs(image[..., :3] - np.array(rgb)).max(axis=-1) < tol).mean())


STRIP_RED = (0.84, 0.29, 0.28)  # the solid strip along the bottom of anomalous episodes
WINDOW_GREEN = (0.875, 0.941, 0.875)  # a labelled window's light fill on white


def window(f: pd.DataFrame, first: int, last: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    return f["timestamp"].iloc[first], f["timestamp"].iloc[last]


def test_with_detections_and_windows(tmp_path):
    f = frame()
    path = tmp_path / "nested" / "dir" / "series.png"
    out = plot_backtest(f, path, title="cat/series.csv", windows=[window(f, 2100, 2300)])
    assert out == path
    image = read_png(path)
    assert share(image, STRIP_RED) > 0.0002
    assert share(image, WINDOW_GREEN) > 0.005


def test_without_detections_or_windows(tmp_path):
    f = frame(episodes=0)
    image = read_png(plot_backtest(f, tmp_path / "quiet.png", title="quiet"))
    assert share(image, STRIP_RED) == 0.0
    assert share(image, WINDOW_GREEN) == 0.0


def test_nan_values_and_missing_band(tmp_path):
    f = frame().assign(baseline=np.nan, band_low=np.nan, band_high=np.nan)
    f.loc[f["anomaly_score"] > 0, "value"] = np.nan  # a detection without a value
    read_png(plot_backtest(f, tmp_path / "gaps.png", title="gaps"))
    all_nan = f.assign(value=np.nan)
    read_png(plot_backtest(all_nan, tmp_path / "empty.png", title="all NaN", windows=[]))


def test_long_frame_with_many_detections(tmp_path):
    f = frame(n=22_000, episodes=400, seed=1)
    windows = [window(f, 5000, 5600), window(f, 15000, 15100)]
    path = plot_backtest(f, tmp_path / "long.png", title="long", windows=windows, max_annotations=5)
    image = read_png(path)
    assert share(image, STRIP_RED) > 0.001


@pytest.mark.parametrize(
    ("reasons", "label"),
    [
        ("level_shift;percent_change", "level shift\n% change"),
        ("volatility_spike", "volatility spike"),
        ("trend_break;", "trend break"),
        ("", "no reason"),
        (np.nan, "no reason"),
    ],
)
def test_reason_label(reasons, label):
    assert reason_label(reasons) == label
