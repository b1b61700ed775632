"""The backtest summary a person reads: per series, what was found, how late, and at what cost.

A detection is a row with ``anomaly_score > 0`` (the first row of a detected episode)
outside the probationary period (the first 15 % of a file, at most 750 rows, as in NAB).
Per file:

- ``found``: labelled windows with at least one detection inside;
- ``first_delay_rows`` / ``first_delay``: median over found windows of how long after the
  window start the first detection came (rows / time, e.g. ``"35m"``);
- ``fp_per_1k``: detections outside every window per 1,000 scored rows;
- ``unexplained``: detections without a reason (should be 0).

The ``overall`` row pools every file and carries the three NAB profile scores of the
``anomaly_score`` column (one threshold over all files, see ``training.nab``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.table import Table

from training.nab import DEFAULT_PROFILES, Window, nab_scores, probation_rows, window_bounds

NAB_COLUMNS = {
    "standard": "nab_standard",
    "reward_low_FP_rate": "nab_low_fp",
    "reward_low_FN_rate": "nab_low_fn",
}
COLUMNS = [
    "file",
    "rows",
    "windows",
    "found",
    "first_delay_rows",
    "first_delay",
    "fp_per_1k",
    "detections",
    "unexplained",
    *NAB_COLUMNS.values(),
]
CAPTION = (
    "detections: anomaly_score > 0 after the probationary period · found: windows with a "
    "detection · first delay: median over found windows · fp per 1k: detections outside "
    "windows per 1,000 scored rows · unexplained: detections without a reason"
)


@dataclass(frozen=True)
class _FileStats:
    rows: int
    scored: int
    windows: int
    delay_rows: list[int]  # one per found window
    delays: list[pd.Timedelta]
    false_positives: int
    detections: int
    unexplained: int


def format_duration(delta: pd.Timedelta | float | None) -> str:
    """A short human duration: ``"45s"``, ``"35m"``, ``"2h05m"``, ``"3d4h"``; ``""`` for NaT."""
    if delta is None or pd.isna(delta):
        return ""
    secs = round(abs(pd.Timedelta(delta).total_seconds()))
    days, rem = divmod(secs, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    return f"{seconds}s"


def _detection_rows(frame: pd.DataFrame) -> np.ndarray:
    """Row numbers of the detections after the probationary period."""
    score = frame["anomaly_score"].to_numpy(dtype=float)
    rows = np.flatnonzero(np.nan_to_num(score, nan=0.0) > 0)
    return rows[rows >= probation_rows(len(frame))]


def _unexplained(frame: pd.DataFrame, rows: np.ndarray) -> int:
    reasons = frame["reasons"].iloc[rows].fillna("").astype(str).str.strip()
    return int((reasons == "").sum())


def _file_stats(frame: pd.DataFrame, windows: list[Window]) -> _FileStats:
    detected = _detection_rows(frame)
    ts = pd.DatetimeIndex(frame["timestamp"])
    inside = np.zeros(len(detected), dtype=bool)
    delay_rows, delays = [], []
    for left, right in window_bounds(ts, windows):
        hits = (detected >= left) & (detected <= right)
        inside |= hits
        if hits.any():
            first = int(detected[hits][0])
            delay_rows.append(first - left)
            delays.append(ts[first] - ts[left])
    return _FileStats(
        rows=len(frame),
        scored=len(frame) - probation_rows(len(frame)),
        windows=len(windows),
        delay_rows=delay_rows,
        delays=delays,
        false_positives=int((~inside).sum()),
        detections=len(detected),
        unexplained=_unexplained(frame, detected),
    )


def _median_delay(delays: list[pd.Timedelta]) -> str:
    return format_duration(pd.Series(delays, dtype="timedelta64[ns]").median())


def _row(name: str, stats: list[_FileStats]) -> dict[str, object]:
    delay_rows = [d for s in stats for d in s.delay_rows]
    scored = sum(s.scored for s in stats)
    false_positives = sum(s.false_positives for s in stats)
    return {
        "file": name,
        "rows": sum(s.rows for s in stats),
        "windows": sum(s.windows for s in stats),
        "found": len(delay_rows),
        "first_delay_rows": float(np.median(delay_rows)) if delay_rows else math.nan,
        "first_delay": _median_delay([d for s in stats for d in s.delays]),
        "fp_per_1k": 1000.0 * false_positives / scored if scored else math.nan,
        "detections": sum(s.detections for s in stats),
        "unexplained": sum(s.unexplained for s in stats),
    }


def _nab_columns(
    frames: Mapping[str, pd.DataFrame], windows: Mapping[str, list[Window]]
) -> dict[str, float]:
    results = nab_scores(
        {name: f["anomaly_score"].to_numpy(dtype=float) for name, f in frames.items()},
        {name: f["timestamp"] for name, f in frames.items()},
        windows,
        DEFAULT_PROFILES,
    )
    return {column: results[profile].score for profile, column in NAB_COLUMNS.items()}


def summarise(
    frames: Mapping[str, pd.DataFrame], windows: Mapping[str, list[Window]]
) -> pd.DataFrame:
    """One row per file (sorted by name) plus an ``overall`` row; NAB scores only in ``overall``.

    ``frames`` are per-series backtest results keyed like ``"realAWSCloudwatch/x.csv"``;
    ``windows`` the labelled anomaly windows by the same keys (missing key: no window).
    """
    names = sorted(frames)
    stats = [_file_stats(frames[name], list(windows.get(name, []))) for name in names]
    rows = [_row(name, [s]) for name, s in zip(names, stats, strict=True)]
    rows.append({**_row("overall", stats), **_nab_columns(frames, windows)})
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(value: object, digits: int = 1) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def render_summary(df: pd.DataFrame) -> Table:
    """The summary as a rich table for the terminal, the ``overall`` row last and bold."""
    table = Table(title="Backtest summary", title_justify="left", caption=CAPTION)
    table.add_column("file", no_wrap=True)
    for column in COLUMNS[1:]:
        table.add_column(column.replace("_", " "), justify="right")
    records = df.to_dict("records")
    for i, record in enumerate(records):
        overall = record["file"] == "overall"
        table.add_row(
            str(record["file"]),
            *(_cell(record[c], 2 if c == "fp_per_1k" else 1) for c in COLUMNS[1:]),
            style="bold" if overall else None,
            end_section=i + 1 < len(records) and records[i + 1]["file"] == "overall",
        )
    return table
