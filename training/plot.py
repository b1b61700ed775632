"""One PNG per backtested series that a person understands at a glance.

The value as a line; the expected level (baseline) dashed, with its band shaded; the rows
the live detector called anomalous shaded red; each detection (first row of an episode)
as a red dot, the strongest ones labelled with their reasons in a strip above the data;
labelled anomaly windows, when known, as green spans.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

FIGSIZE = (14.0, 5.0)
DPI = 110
VALUE_COLOUR = "#1f4e79"
BASELINE_COLOUR = "#6b6b6b"
ANOMALY_COLOUR = "#d62728"
WINDOW_COLOUR = "#2ca02c"
LABEL_LEVELS = (0.97, 0.885, 0.80)  # axes fraction of the staggered reason labels
CANDIDATES_PER_LABEL = 4  # detections tried per label slot before giving up
HEADROOM = 0.45  # extra y range above the data, as a fraction of it, for the labels
LEGEND_ORDER = [
    "value", "baseline", "expected band", "anomalous", "detection", "labelled anomaly window"
]  # fmt: skip
REASON_LABELS = {
    "level_shift": "level shift",
    "volatility_spike": "volatility spike",
    "trend_break": "trend break",
    "percent_change": "% change",
    "spike": "spike",
}


def _date_numbers(stamps: pd.Series | pd.DatetimeIndex | list[pd.Timestamp]) -> np.ndarray:
    """Matplotlib date numbers; tz-aware stamps in UTC, naive ones taken as they are."""
    index = pd.DatetimeIndex(pd.to_datetime(list(stamps) if isinstance(stamps, list) else stamps))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return mdates.date2num(index.to_pydatetime()) if len(index) else np.array([])


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def _episodes(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first row, row after the last) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _span(x: np.ndarray, start: int, stop: int, step: float) -> tuple[float, float]:
    """(left, width) of rows start..stop-1, reaching to the next row so one row is visible."""
    right = x[stop] if stop < len(x) else x[-1] + step
    return float(x[start]), float(right - x[start])


def reason_label(reasons: object) -> str:
    """Short text for a detection's ``;``-joined reasons, one per line."""
    names = [r.strip() for r in str(reasons if isinstance(reasons, str) else "").split(";")]
    names = [REASON_LABELS.get(r, r.replace("_", " ")) for r in names if r]
    return "\n".join(names) if names else "no reason"


def _y_limits(ax: Axes, headroom: float, *columns: np.ndarray) -> None:
    """Fit the data, with a strip of ``headroom`` (fraction of its range) above for labels."""
    finite = np.concatenate([c[np.isfinite(c)] for c in columns])
    if not len(finite):
        return
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    ax.set_ylim(lo - 0.05 * span, hi + max(headroom, 0.05) * span)


def _draw_series(ax: Axes, x: np.ndarray, frame: pd.DataFrame, headroom: float) -> None:
    value, baseline = _column(frame, "value"), _column(frame, "baseline")
    low, high = _column(frame, "band_low"), _column(frame, "band_high")
    band = np.isfinite(low) & np.isfinite(high)
    if band.any():
        ax.fill_between(
            x, low, high, where=band, color=BASELINE_COLOUR, alpha=0.15, lw=0,
            label="expected band",
        )  # fmt: skip
    if np.isfinite(baseline).any():
        ax.plot(x, baseline, ls="--", lw=1.0, color=BASELINE_COLOUR, label="baseline (expected)")
    ax.plot(x, value, lw=0.9, color=VALUE_COLOUR, label="value")
    _y_limits(ax, headroom, value, baseline, low, high)


def _draw_spans(
    ax: Axes, spans: list[tuple[float, float]], label: str, face: tuple, edge: tuple | None = None
) -> None:
    """Full-height spans (left, width) in one artist: fast for thousands of episodes."""
    if spans:
        ax.broken_barh(
            spans, (0, 1), transform=ax.get_xaxis_transform(), facecolors=face,
            edgecolors=edge or "none", lw=1.0 if edge else 0, label=label, zorder=0,
        )  # fmt: skip


def _draw_episodes(ax: Axes, x: np.ndarray, frame: pd.DataFrame) -> int:
    flags = np.nan_to_num(_column(frame, "anomalous"), nan=0.0) > 0
    episodes = _episodes(flags)
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0 / 1440  # a minute
    spans = [_span(x, a, b, step) for a, b in episodes]
    _draw_spans(ax, spans, "anomalous (live verdict)", to_rgba(ANOMALY_COLOUR, 0.15))
    if spans:  # a solid strip along the bottom keeps episodes visible over other shading
        ax.broken_barh(
            spans, (0, 0.025), transform=ax.get_xaxis_transform(),
            facecolors=to_rgba(ANOMALY_COLOUR, 0.8), lw=0, zorder=3,
        )  # fmt: skip
    return len(episodes)


def _draw_windows(ax: Axes, windows: list[tuple[pd.Timestamp, pd.Timestamp]]) -> None:
    starts = _date_numbers([pd.Timestamp(a) for a, _ in windows])
    ends = _date_numbers([pd.Timestamp(b) for _, b in windows])
    spans = [(float(a), float(b - a)) for a, b in zip(starts, ends, strict=True)]
    face, edge = to_rgba(WINDOW_COLOUR, 0.15), to_rgba(WINDOW_COLOUR, 0.9)
    _draw_spans(ax, spans, "labelled anomaly window", face, edge)


def _strongest(score: np.ndarray, rows: np.ndarray, limit: int) -> np.ndarray:
    """The ``limit`` rows with the highest score, strongest first (earliest first among ties)."""
    return rows[np.argsort(-score[rows], kind="stable")[: max(limit, 0)]]


def _annotation(ax: Axes, xy: tuple[float, float], level: float, text: str) -> Annotation:
    lo, hi = ax.get_xlim()
    where = (xy[0] - lo) / (hi - lo) if hi > lo else 0.5
    ha = "left" if where < 0.04 else "right" if where > 0.96 else "center"
    return ax.annotate(
        text, xy=xy, xytext=(xy[0], level), textcoords=ax.get_xaxis_transform(), ha=ha,
        va="top", fontsize=8, color="#8b0000", zorder=5,
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": ANOMALY_COLOUR, "lw": 0.6},
        arrowprops={"arrowstyle": "-", "color": ANOMALY_COLOUR, "lw": 0.6, "alpha": 0.6},
    )  # fmt: skip


def _place_label(ax: Axes, xy: tuple[float, float], text: str, taken: list[Bbox]) -> bool:
    """Put the label on the highest free level of the strip above the data; False if none is."""
    renderer = ax.figure.canvas.get_renderer()
    for level in LABEL_LEVELS:
        label = _annotation(ax, xy, level, text)
        label.update_positions(renderer)  # the text alone, without its connector line
        box = Text.get_window_extent(label, renderer).expanded(1.08, 1.3)
        if not any(box.overlaps(other) for other in taken):
            taken.append(box)
            return True
        label.remove()
    return False


def _detection_points(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the detections that can be drawn, their y (value, else baseline), all scores."""
    score = np.nan_to_num(_column(frame, "anomaly_score"), nan=0.0)
    value, baseline = _column(frame, "value"), _column(frame, "baseline")
    y = np.where(np.isfinite(value), value, baseline)
    return np.flatnonzero((score > 0) & np.isfinite(y)), y, score


def _draw_detections(ax: Axes, x: np.ndarray, frame: pd.DataFrame, label: str) -> None:
    rows, y, _ = _detection_points(frame)
    if len(rows):
        ax.scatter(x[rows], y[rows], s=22, color=ANOMALY_COLOUR, zorder=4, label=label)


def _label_detections(ax: Axes, x: np.ndarray, frame: pd.DataFrame, limit: int) -> int:
    """Label up to ``limit`` detections with their reasons, strongest first; a detection whose
    label would overlap one already placed gives way to the next strongest."""
    rows, y, score = _detection_points(frame)
    reasons = frame["reasons"] if "reasons" in frame else pd.Series([""] * len(frame))
    taken: list[Bbox] = []
    for row in _strongest(score, rows, CANDIDATES_PER_LABEL * limit):
        if len(taken) >= limit:
            break
        _place_label(ax, (x[row], y[row]), reason_label(reasons.iloc[row]), taken)
    return len(taken)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _format_axes(ax: Axes, title: str, subtitle: str) -> None:
    locator = mdates.AutoDateLocator(minticks=5, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    ax.set_title(subtitle, loc="right", fontsize=9, color="#555555")
    ax.set_ylabel("value")
    ax.grid(True, axis="y", lw=0.4, alpha=0.5)


def _detection_note(detections: int, labelled: int) -> str:
    if labelled < detections:
        return f"detection ({detections}; strongest {labelled} labelled)"
    return f"detection ({detections})"


def _legend(ax: Axes) -> Legend:
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: LEGEND_ORDER.index(labels[i].split(" (")[0]))
    return ax.legend(
        [handles[i] for i in order], [labels[i] for i in order], loc="upper center",
        bbox_to_anchor=(0.5, -0.09), ncol=6, fontsize=9, frameon=False,
    )  # fmt: skip


def _subtitle(frame: pd.DataFrame, episodes: int, windows: list | None) -> str:
    detections = int((np.nan_to_num(_column(frame, "anomaly_score"), nan=0.0) > 0).sum())
    parts = [_count(len(frame), "row"), _count(detections, "detection")]
    parts.append(_count(episodes, "anomalous episode"))
    if windows is not None:
        parts.append(_count(len(windows), "labelled window"))
    return " · ".join(parts)


def plot_backtest(
    frame: pd.DataFrame,
    path: Path,
    *,
    title: str,
    windows: list[tuple[pd.Timestamp, pd.Timestamp]] | None = None,
    max_annotations: int = 12,
) -> Path:
    """Draw one backtested series (columns as produced by the backtest) to a PNG at ``path``."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = _date_numbers(frame["timestamp"])
    ax.xaxis_date()
    drawable = len(_detection_points(frame)[0])
    _draw_series(ax, x, frame, HEADROOM if drawable and max_annotations > 0 else 0.0)
    if len(x):
        ax.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1.0 / 1440)
    episodes = _draw_episodes(ax, x, frame)
    if windows:
        _draw_windows(ax, windows)
    _draw_detections(ax, x, frame, _detection_note(drawable, min(drawable, max_annotations)))
    _format_axes(ax, title, _subtitle(frame, episodes, windows))
    legend = _legend(ax)
    fig.tight_layout()  # the labels go on the final geometry; overlapping ones are skipped
    labelled = _label_detections(ax, x, frame, max_annotations)
    for text in legend.get_texts():
        if text.get_text().startswith("detection"):
            text.set_text(_detection_note(drawable, labelled))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
