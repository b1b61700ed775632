"""NAB (Numenta Anomaly Benchmark) scoring of backtest detections.

Our own vectorised implementation of NAB's scoring rules (the same rules as
``/work/shared/nab/nab_score.py``, which the tests compare against):

- The first 15 % of each file (at most 750 rows) is the probationary period: never scored.
- A labelled window ``[start, end]`` covers rows ``L..R`` (width ``W``). Only the
  earliest detection inside a window counts, worth ``A_TP * sig(-(R - i + 1) / W) / sig(-1)``
  with ``sig(y) = 2 / (1 + exp(5 y)) - 1`` (``sig = -1`` for ``y > 3``); a window without
  a detection costs ``-A_FN``.
- A detection outside all windows costs ``A_FP * sig((i - R) / (W - 1))`` for the preceding
  window ``L..R`` (``-A_FP`` when there is none): false alarms just after a window are cheap.
- Rows with ``score >= threshold`` are detections. ONE threshold serves all files: every
  distinct score value is tried, and "detect nothing" too; the best raw score wins (ties go
  to the highest threshold).
- Normalised score ``100 * (raw - null) / (perfect - null)``: ``perfect = A_TP * windows``,
  ``null`` = the best raw score of a detector that outputs a constant. 0 = never fires,
  100 = every window found at its first row and no false alarm.

``tp``/``fp``/``fn`` are NAB's row counts (detected rows inside / outside windows, undetected
rows inside windows); ``windows_detected`` counts windows with at least one detection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 750

Window = tuple[pd.Timestamp, pd.Timestamp]
Stamps = pd.DatetimeIndex | pd.Series | np.ndarray


@dataclass(frozen=True)
class CostProfile:
    """Weights of an application profile: reward per window found, costs per miss / false alarm."""

    tp: float
    fn: float
    fp: float


DEFAULT_PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile(tp=1.0, fn=1.0, fp=0.11),
    "reward_low_FP_rate": CostProfile(tp=1.0, fn=1.0, fp=0.22),
    "reward_low_FN_rate": CostProfile(tp=1.0, fn=2.0, fp=0.11),
}


@dataclass(frozen=True)
class FileResult:
    """One file's share of a profile's result at the corpus-wide threshold."""

    raw: float
    tp: int
    fp: int
    fn: int
    windows: int
    windows_detected: int


@dataclass(frozen=True)
class ProfileResult:
    """A profile's score at the best corpus-wide threshold (detections: score >= threshold)."""

    score: float  # normalised: 0 = null detector, 100 = perfect detector
    raw: float
    threshold: float  # inf = detect nothing
    tp: int
    fp: int
    fn: int
    null_raw: float
    perfect_raw: float
    windows: int
    windows_detected: int
    files: dict[str, FileResult]


@dataclass(frozen=True)
class _Layout:
    """The scored rows of one file: window id (-1 outside) and unweighted row value."""

    window: np.ndarray  # int, per scored row
    value: np.ndarray  # inside: TP value in (0, 1]; outside: FP sigmoid in [-1, 0]
    labelled: int  # all labelled windows of the file, scorable or not

    @property
    def inside(self) -> np.ndarray:
        return self.window >= 0

    @property
    def scorable(self) -> int:
        return len(np.unique(self.window[self.inside]))


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Labelled windows from NAB's ``combined_windows.json``, each file's sorted by start."""
    raw = json.loads(Path(path).read_text())
    return {
        name: sorted((pd.Timestamp(a), pd.Timestamp(b)) for a, b in spans)
        for name, spans in raw.items()
    }


def load_profiles(path: str | Path) -> dict[str, CostProfile]:
    """Cost profiles from NAB's ``profiles.json`` (``{name: {"CostMatrix": {...}}}``)."""
    raw = json.loads(Path(path).read_text())
    return {
        name: CostProfile(
            tp=float(p["CostMatrix"]["tpWeight"]),
            fn=float(p["CostMatrix"]["fnWeight"]),
            fp=float(p["CostMatrix"]["fpWeight"]),
        )
        for name, p in raw.items()
    }


def probation_rows(n: int) -> int:
    """Rows at the start of an ``n``-row file that are never scored."""
    return min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP_ROWS)


def sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid: ~+0.987 at y=-1, 0 at y=0, ~-0.987 at y=1, -1 beyond y=3."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 3.0))) - 1.0)


def _as_index(timestamps: Stamps) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps)))


def _in_tz(stamp: pd.Timestamp, ts: pd.DatetimeIndex) -> pd.Timestamp:
    """A window edge comparable with ``ts``: naive edges are read as UTC for tz-aware ``ts``."""
    stamp = pd.Timestamp(stamp)
    if ts.tz is not None and stamp.tz is None:
        return stamp.tz_localize("UTC").tz_convert(ts.tz)
    if ts.tz is None and stamp.tz is not None:
        return stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def window_bounds(timestamps: Stamps, windows: list[Window]) -> list[tuple[int, int]]:
    """First and last row (inclusive) of each window, sorted by start; rows in time order."""
    ts = _as_index(timestamps)
    bounds = []
    for start, end in sorted(windows, key=lambda w: pd.Timestamp(w[0])):
        left = int(ts.searchsorted(_in_tz(start, ts), side="left"))
        right = int(ts.searchsorted(_in_tz(end, ts), side="right")) - 1
        if left >= len(ts) or right < left:
            raise ValueError(f"window {start}..{end} covers no row")
        bounds.append((left, right))
    return bounds


def _row_values(n: int, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Window id (-1 outside) and unweighted value of every row of an ``n``-row file."""
    rows = np.arange(n)
    if not bounds:
        return np.full(n, -1), np.full(n, -1.0)
    left, right = (np.array(side) for side in zip(*bounds, strict=True))
    width = (right - left + 1).astype(float)
    k = np.searchsorted(left, rows, side="right") - 1  # last window starting at or before
    inside = (k >= 0) & (rows <= right[np.maximum(k, 0)])
    window = np.where(inside, k, -1)
    tp_value = sigmoid(-(right[window] - rows + 1) / width[window]) / sigmoid(-1.0)
    prev = np.searchsorted(right, rows, side="left") - 1  # last window ending before the row
    w_prev = width[np.maximum(prev, 0)]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(w_prev > 1, (rows - right[np.maximum(prev, 0)]) / (w_prev - 1), np.inf)
    fp_value = np.where(prev >= 0, sigmoid(y), -1.0)
    return window, np.where(inside, tp_value, fp_value)


def _layout(timestamps: Stamps, windows: list[Window]) -> _Layout:
    n = len(timestamps)
    window, value = _row_values(n, window_bounds(timestamps, windows))
    start = probation_rows(n)
    return _Layout(window=window[start:], value=value[start:], labelled=len(windows))


def _clean(scores: np.ndarray) -> np.ndarray:
    """Scores as floats; a non-finite score (NaN, inf) never detects."""
    s = np.asarray(scores, dtype=float)
    return np.where(np.isfinite(s), s, -np.inf)


def _window_gains(window: np.ndarray, value: np.ndarray, fn: float) -> np.ndarray:
    """Raw-score change at each in-window row, rows taken in detection (score-descending) order.

    A window's worth is the best value detected so far (or ``-fn`` before its first
    detection), so each row adds the rise of its window's running maximum.
    """
    by_window = pd.Series(value).groupby(window)
    best = by_window.cummax()
    before = best.groupby(window).shift(1).fillna(-fn)
    return (best - before).to_numpy()


def _sweep(layouts: list[_Layout], scores: list[np.ndarray], cost: CostProfile) -> pd.DataFrame:
    """Raw score and counts at every candidate threshold, from "detect nothing" (inf) down."""
    offsets = np.cumsum([0] + [lay.labelled for lay in layouts])[:-1]
    pairs = zip(layouts, offsets, strict=True)
    window = np.concatenate([np.where(lay.inside, lay.window + off, -1) for lay, off in pairs])
    value = np.concatenate([lay.value for lay in layouts])
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    score, window, value = score[order], window[order], value[order]
    inside = window >= 0

    gain = cost.fp * value
    gain[inside] = _window_gains(window[inside], cost.tp * value[inside], cost.fn)
    base = -cost.fn * sum(lay.scorable for lay in layouts)
    last_of_value = np.append(score[:-1] != score[1:], True) & np.isfinite(score)
    k = np.flatnonzero(last_of_value)
    tp = np.cumsum(inside)[k]
    fp = np.cumsum(~inside)[k]
    return pd.DataFrame(
        {
            "threshold": np.concatenate([[np.inf], score[k]]),
            "raw": np.concatenate([[base], base + np.cumsum(gain)[k]]),
            "tp": np.concatenate([[0], tp]),
            "fp": np.concatenate([[0], fp]),
            "fn": int(inside.sum()) - np.concatenate([[0], tp]),
        }
    )


def _best(table: pd.DataFrame) -> pd.Series:
    """The best row; ties go to the highest threshold (the first row)."""
    return table.iloc[int(np.argmax(table["raw"].to_numpy()))]


def _file_result(
    lay: _Layout, scores: np.ndarray, cost: CostProfile, threshold: float
) -> FileResult:
    detected = scores >= threshold
    inside = lay.inside
    best = np.full(lay.labelled, -np.inf)
    hit = detected & inside
    np.maximum.at(best, lay.window[hit], cost.tp * lay.value[hit])
    scorable = np.unique(lay.window[inside])
    window_raw = np.where(np.isfinite(best[scorable]), best[scorable], -cost.fn)
    raw = float(window_raw.sum() + cost.fp * lay.value[detected & ~inside].sum())
    return FileResult(
        raw=raw,
        tp=int(hit.sum()),
        fp=int((detected & ~inside).sum()),
        fn=int((~detected & inside).sum()),
        windows=lay.labelled,
        windows_detected=int(np.isfinite(best).sum()),
    )


def _profile_result(
    names: list[str], layouts: list[_Layout], scores: list[np.ndarray], cost: CostProfile
) -> ProfileResult:
    row = _best(_sweep(layouts, scores, cost))
    null = float(_best(_sweep(layouts, [np.zeros(len(s)) for s in scores], cost))["raw"])
    labelled = sum(lay.labelled for lay in layouts)
    perfect = cost.tp * labelled
    threshold = float(row["threshold"])
    files = {
        name: _file_result(lay, s, cost, threshold)
        for name, lay, s in zip(names, layouts, scores, strict=True)
    }
    return ProfileResult(
        score=100.0 * (row["raw"] - null) / (perfect - null) if perfect != null else math.nan,
        raw=float(row["raw"]),
        threshold=threshold,
        tp=int(row["tp"]),
        fp=int(row["fp"]),
        fn=int(row["fn"]),
        null_raw=null,
        perfect_raw=perfect,
        windows=labelled,
        windows_detected=sum(f.windows_detected for f in files.values()),
        files=files,
    )


def nab_scores(
    scores: Mapping[str, np.ndarray],
    timestamps: Mapping[str, Stamps],
    windows: Mapping[str, list[Window]],
    profiles: Mapping[str, CostProfile] = DEFAULT_PROFILES,
) -> dict[str, ProfileResult]:
    """NAB score per profile of the files in ``scores`` (keys like ``"realAWSCloudwatch/x.csv"``).

    ``scores[f]`` has one value per row of ``timestamps[f]`` (higher = more anomalous; NaN
    never detects); files missing from ``windows`` have no labelled window.
    """
    names = sorted(scores)
    for name in names:
        if len(scores[name]) != len(timestamps[name]):
            raise ValueError(f"{name}: {len(scores[name])} scores for {len(timestamps[name])} rows")
    layouts = [_layout(timestamps[name], list(windows.get(name, []))) for name in names]
    cut = [_clean(scores[name])[probation_rows(len(scores[name])) :] for name in names]
    return {
        profile: _profile_result(names, layouts, cut, cost) for profile, cost in profiles.items()
    }
