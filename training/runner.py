"""``aiops backtest``: replay CSV files or Prometheus history through the live detector.

For each series the output CSV has one row per input row:
``timestamp, value, score, forest_score, anomaly_score, anomalous, reasons, baseline,
band_low, band_high``

- ``score``: the calibrated score of the row, as ``aiops_anomaly_score``: the strongest
  reason over the series' own level for it, at least 1 exactly where anomalous;
- ``forest_score``: the IsolationForest score of the row (0..1);
- ``anomalous``: the live verdict (1 for every row of an anomaly, as ``aiops_anomaly_current``);
- ``anomaly_score``: nonzero only on the first row of each anomaly (a detection, as
  the webhook would receive one event): the strongest reason's statistic over its
  threshold times the forest score. This is the column NAB's scorer thresholds;
- ``reasons``: the reasons of that row, ``;``-joined (empty when not anomalous);
- ``baseline`` and ``band_*``: the expected band (``detector.features.robust_band``):
  its middle, and ± z_thresh band sds within the range the series can take.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aiops.core.errors import AiopsError
from aiops.core.series import series_name
from aiops.core.settings import Settings
from detector.catalogue import Query
from detector.pipeline import feature_spec
from detector.source import PrometheusSource, SeriesBatch
from detector.verdict import Thresholds
from training.backtest import Replay, replay

#: Prometheus refuses range queries of more than 11,000 points per series.
MAX_POINTS = 11000


class BacktestError(AiopsError):
    pass


@dataclass
class SeriesInput:
    name: str  # relative output path without suffix, e.g. "realAWSCloudwatch/ec2_cpu"
    timestamps: pd.DatetimeIndex
    values: np.ndarray


def infer_step(timestamps: pd.DatetimeIndex) -> float:
    """The regular spacing of the rows, in seconds: the most common gap between two
    rows (missing rows make some gaps longer, never the common one shorter; a repeated
    timestamp is one row)."""
    if len(timestamps) < 2:
        raise BacktestError("need at least two rows to infer the step")
    diffs = np.diff(timestamps.asi8) / 1e9
    if (diffs < 0).any() or not (diffs > 0).any():
        raise BacktestError("timestamps must increase (a repeated one is taken once)")
    values, counts = np.unique(np.round(diffs[diffs > 0], 6), return_counts=True)
    return float(values[np.argmax(counts)])


@dataclass
class Grid:
    """A series laid on its regular time grid: missing rows are missing points (NaN),
    never interpolated, so windows, baselines and seasonal lags count real time."""

    values: np.ndarray  # (points,) one per grid step, NaN where no row fell
    rows: np.ndarray  # (rows,) the grid point of each input row


def on_grid(timestamps: pd.DatetimeIndex, values: np.ndarray, step: float) -> Grid:
    """``values`` at ``timestamps`` on the grid of ``step`` seconds from the first row (a
    row off the grid goes to its nearest point; of two rows on one point the later wins)."""
    seconds = (timestamps.asi8 - timestamps.asi8[0]) / 1e9
    rows = np.rint(seconds / step).astype(np.int64)
    if len(rows) and rows[-1] > MAX_GRID_POINTS:
        raise BacktestError(
            f"{rows[-1] + 1:,} grid points at a {step:g} s step: more than {MAX_GRID_POINTS:,}"
            " (are the timestamps in one series?)"
        )
    grid = np.full(int(rows[-1]) + 1 if len(rows) else 0, np.nan)
    grid[rows] = values
    return Grid(grid, rows)


#: a backtest's grid is bounded (a stray timestamp years away must not allocate terabytes)
MAX_GRID_POINTS = 50_000_000


def read_csv(path: Path, root: Path) -> SeriesInput:
    """A ``timestamp,value`` CSV; the name keeps the path relative to ``root``."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise BacktestError(f"{path}: cannot read CSV: {exc}") from None
    missing = {"timestamp", "value"} - set(df.columns)
    if missing:
        raise BacktestError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    try:
        ts = pd.DatetimeIndex(pd.to_datetime(df["timestamp"]))
    except (ValueError, TypeError) as exc:
        raise BacktestError(f"{path}: bad timestamp: {exc}") from None
    values = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=np.float64)
    rel = path.relative_to(root) if path != root else Path(path.name)
    return SeriesInput(str(rel.with_suffix("")), ts, values)


def find_csvs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.csv") if p.is_file())
        if not files:
            raise BacktestError(f"{path}: no .csv file found")
        return files
    raise BacktestError(f"{path}: no such file or folder")


#: A detection held only by passive reasons (a spike: shown, not acted on) weighs this
#: share of an active one.
PASSIVE_WEIGHT = 0.5


def detection_rows(anomalous: np.ndarray, onset: np.ndarray, active: np.ndarray) -> np.ndarray:
    """The detections of (series × time) verdicts: each onset, and in an episode that a
    passive reason started (a spike), the first row where an active reason holds it:
    the moment the live detector posts the webhook its firing event."""
    first_active = np.zeros(anomalous.shape, dtype=bool)
    done = np.zeros(anomalous.shape[0], dtype=bool)
    act = active & anomalous
    for t in range(anomalous.shape[1]):
        done &= ~onset[:, t]
        first_active[:, t] = act[:, t] & ~done
        done |= act[:, t]
    return onset | first_active


def event_score(r: Replay) -> np.ndarray:
    """Nonzero on detections: how much a detection weighs, for one threshold over all series.

    A detection is an anomaly's onset, or the row where an active reason joins an
    anomaly that a passive one (``spike``) started (``detection_rows``). Its weight is
    the forest score times ``ln(1 + novelty)`` of its strongest reason (how
    far it beats the same reason's recent maximum; the log keeps a flat series' first
    wiggle from outweighing everything) times the square root of the number of reasons
    that agree; ``PASSIVE_WEIGHT`` of that for an onset that only passive reasons hold.

    The forest's factor is 0.5 (an ordinary point) where it gave no score, and where the
    row had an undefined feature (a percent change from a zero baseline...): the forest
    scored that row with the feature neutral (``detector.scoring.scoring_rows``), having
    seen only part of it, and that partial opinion does not rank the detection.
    """
    defined = np.isfinite(r.features.matrix()).all(axis=-1).reshape(r.score.shape)
    forest = np.where(defined, np.nan_to_num(r.score, nan=0.5), 0.5)
    agree = sum(ev.fired.astype(np.float64) for ev in r.evidence)
    weight = np.log1p(np.maximum(r.weight, 1.0)) * np.sqrt(np.maximum(agree, 1.0))
    active = r.active if r.active is not None else r.anomalous
    detected = detection_rows(r.anomalous, r.onset, active)
    share = np.where(active, 1.0, PASSIVE_WEIGHT)
    return np.where(detected, weight * forest * share, 0.0)


def reason_strings(r: Replay) -> np.ndarray:
    out = np.full(r.anomalous.shape, "", dtype=object)
    for ev in r.evidence:
        hit = ev.fired
        out[hit] = np.where(out[hit] == "", ev.reason, out[hit] + ";" + ev.reason)
    return out


def frames(
    r: Replay, inputs: list[SeriesInput], grids: list[Grid], z_thresh: float
) -> Iterator[pd.DataFrame]:
    """One output frame per input series: its own rows, read off its grid."""
    events = event_score(r)
    reasons = reason_strings(r)
    calibrated = r.calibrated if r.calibrated is not None else np.full(r.score.shape, np.nan)
    f = r.features
    for i, (s, g) in enumerate(zip(inputs, grids, strict=True)):
        at = g.rows
        low, high = expected_band(f.value[i], f.band_center[i], f.band_scale[i], z_thresh)
        yield pd.DataFrame(
            {
                "timestamp": s.timestamps,
                "value": s.values,
                "score": np.round(calibrated[i, at], 6),
                "forest_score": np.round(r.score[i, at], 6),
                "anomaly_score": np.round(events[i, at], 6),
                "anomalous": r.anomalous[i, at].astype(int),
                "reasons": reasons[i, at],
                "baseline": f.band_center[i, at],
                "band_low": low[at],
                "band_high": high[at],
            }
        )


def expected_band(
    value: np.ndarray, center: np.ndarray, scale: np.ndarray, z_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """The expected band of one series: its middle ± ``z_thresh`` band sds, the very band
    an anomaly starts outside of and ends back inside (``detector.verdict``), kept within
    the range the series can take: a series never negative so far (a count, a rate, a
    ratio) gets no band below 0, one never above 1 while never below 0 (a ratio) none
    above 1."""
    low, high = center - z_thresh * scale, center + z_thresh * scale
    seen = np.where(np.isfinite(value), value, np.nan)
    with np.errstate(invalid="ignore"):
        lowest = np.fmin.accumulate(np.where(np.isfinite(seen), seen, np.inf))
        highest = np.fmax.accumulate(np.where(np.isfinite(seen), seen, -np.inf))
        low = np.where(lowest >= 0, np.fmax(low, 0.0), low)
        high = np.where((lowest >= 0) & (highest <= 1), np.fmin(high, 1.0), high)
    return low, high


def backtest_series(
    inputs: list[SeriesInput], settings: Settings, query: Query
) -> list[pd.DataFrame]:
    """Replay series that share a step (one query) with the live configuration, each on
    its regular time grid (``on_grid``), as the live detector sees a range query."""
    step = infer_step(inputs[0].timestamps)
    grids = [on_grid(s.timestamps, s.values, step) for s in inputs]
    width = max(len(g.values) for g in grids)
    values = np.full((len(inputs), width), np.nan)
    for i, g in enumerate(grids):
        values[i, : len(g.values)] = g.values
    spec = feature_spec(query, settings, step, weekly=True)
    th = Thresholds.from_settings(settings)
    r = replay(values, spec, th, query.direction)
    return list(frames(r, inputs, grids, th.z_thresh))


def fetch_history(
    source: PrometheusSource, query: Query, *, start: float, end: float, step: float
) -> SeriesBatch:
    """The whole range, split so that no request exceeds Prometheus' points limit."""
    if math.floor((end - math.ceil(start / step) * step) / step) + 1 < 2:
        raise BacktestError("--end must be after --start by at least two steps")
    return source.fetch_range(query, start=start, end=end, step=step, max_points=MAX_POINTS)


def prometheus_inputs(batch: SeriesBatch) -> list[SeriesInput]:
    ts = pd.DatetimeIndex(pd.to_datetime(batch.timestamps, unit="s"))
    return [
        SeriesInput(series_name(batch.query, lab), ts, row)
        for lab, row in zip(batch.labels, batch.values, strict=True)
    ]


def write(frame: pd.DataFrame, out: Path, name: str) -> Path:
    path = out / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
