"""What operators' verdicts on anomalies do to detection: per series and reason,
bounded and reversible.

A person says of an anomaly "not an incident" (``false_alarm``) or "real incident"
(``incident``). Each verdict keeps, per reason the anomaly had, the reason's
statistic at the anomaly's peak (its ``zscore``: band sds for a spike, the window
z for a level shift, ...) and the threshold it crossed then (the series' own level,
in the same units). Per series and reason:

- a ``false_alarm`` puts a floor under the reason's threshold: the statistic times
  ``MARGIN``, so the same magnitude does not alarm again — never more than
  ``AIOPS_FEEDBACK_MAX_RAISE`` (3) times the threshold it crossed. The floor decays
  back to that threshold with a half-life of ``AIOPS_FEEDBACK_HALF_LIFE_DAYS`` (30):
  a pattern that stops recurring is forgotten, and a mistaken click heals by itself;
- an ``incident`` protects detections of its strength: no floor of that series and
  reason may rise above ``PROTECT`` times its statistic, so a real incident of that
  size would still alarm;
- a verdict counts from the time it was given (a backtest with feedback replays it
  so); a person's second verdict on an anomaly replaces the first.

A floor only ever raises a threshold: the series' own level, trained or learned,
still applies beneath it. ``floors_at`` and ``floor_columns`` are pure functions of
the verdicts and the time: the live cycle, the streaming replay
(``training.backtest.replay``) and ``aiops feedback list --effects`` all use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: verdicts a person may give
VERDICTS = ("false_alarm", "incident")
#: a false alarm's floor: its statistic times this (the same magnitude stays below)
MARGIN = 1.25
#: a confirmed incident caps later floors at this share of its statistic
PROTECT = 0.95


@dataclass(frozen=True)
class ReasonSeen:
    """One reason of an anomaly at its peak: its statistic and the threshold it crossed."""

    reason: str
    statistic: float
    threshold: float


@dataclass(frozen=True)
class Verdict:
    """One person's verdict on one anomaly of one series."""

    series: str  # series_key(metric, labels)
    verdict: str  # false_alarm | incident
    at: float  # when it was given (Unix seconds)
    reasons: tuple[ReasonSeen, ...]

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


def seen(reasons: Iterable[dict]) -> tuple[ReasonSeen, ...]:
    """The reasons of an anomaly (dicts with ``reason``, ``zscore``, ``threshold``: the
    detector's reasons, ``aiops_anomalies.reasons``) at their strongest, one per reason;
    a reason without a finite statistic and threshold counts for nothing."""
    best: dict[str, ReasonSeen] = {}
    for r in reasons:
        name = r.get("reason")
        z, thr = r.get("zscore"), r.get("threshold")
        if not name or z is None or thr is None:
            continue
        z, thr = abs(float(z)), abs(float(thr))
        if not (math.isfinite(z) and math.isfinite(thr)) or thr <= 0:
            continue
        if name not in best or z > best[name].statistic:
            best[name] = ReasonSeen(name, z, thr)
    return tuple(best[k] for k in sorted(best))


def verdict_of(row: dict) -> Verdict:
    """A stored verdict (a row of ``aiops_feedback``)."""
    return Verdict(row["series"], row["verdict"], float(row["given_at"]), seen(row["reasons"]))


@dataclass(frozen=True)
class Floor:
    """A floor in force: series, reason, the floor now, and what set it."""

    series: str
    reason: str
    floor: float  # statistic units (0: none)
    threshold: float  # the threshold the false alarm crossed
    false_alarms: int
    cap: float | None  # set by a confirmed incident (None: none)

    @property
    def raise_factor(self) -> float:
        return self.floor / self.threshold if self.threshold > 0 and self.floor > 0 else 1.0


def floor_at(
    verdicts: Sequence[Verdict],
    reason: str,
    t: float,
    *,
    max_raise: float,
    half_life: float,
) -> tuple[float, float, float | None]:
    """(floor, threshold behind it, cap) for ``reason`` of one series at time ``t``."""
    floor, base, cap = 0.0, 0.0, math.inf
    for v in verdicts:
        if v.at > t:
            continue
        for r in v.reasons:
            if r.reason != reason:
                continue
            if v.verdict == "incident":
                cap = min(cap, PROTECT * r.statistic)
                continue
            full = min(r.statistic * MARGIN, r.threshold * max_raise)
            decay = 0.5 ** ((t - v.at) / half_life)
            now = r.threshold + max(full - r.threshold, 0.0) * decay
            if now > floor:
                floor, base = now, r.threshold
    if floor > 0 and math.isfinite(cap):
        floor = min(floor, cap)
    return floor, base, (None if math.isinf(cap) else cap)


def floors_at(
    verdicts: Iterable[Verdict], t: float, *, max_raise: float, half_life: float
) -> list[Floor]:
    """Every floor in force at ``t`` (the ``aiops feedback list --effects`` table)."""
    by_series: dict[str, list[Verdict]] = {}
    for v in verdicts:
        by_series.setdefault(v.series, []).append(v)
    out = []
    for series, vs in sorted(by_series.items()):
        for reason in sorted({r.reason for v in vs for r in v.reasons}):
            floor, base, cap = floor_at(vs, reason, t, max_raise=max_raise, half_life=half_life)
            n = sum(
                v.verdict == "false_alarm"
                and v.at <= t
                and any(r.reason == reason for r in v.reasons)
                for v in vs
            )
            if floor > base or cap is not None:
                out.append(Floor(series, reason, floor, base, n, cap))
    return out


@dataclass
class Feedback:
    """The verdicts the live detector applies, and how (the settings)."""

    verdicts: list[Verdict]
    max_raise: float = 3.0
    half_life: float = 30 * 86400.0
    #: (series, onset) of the anomalies called false alarms: not held by hysteresis
    dismissed: set[tuple[str, float]] = field(default_factory=set)

    @classmethod
    def from_rows(cls, rows: Iterable[dict], settings: object) -> Feedback:
        rows = list(rows)
        return cls(
            [verdict_of(r) for r in rows],
            float(getattr(settings, "feedback_max_raise", 3.0)),
            float(getattr(settings, "feedback_half_life_days", 30.0)) * 86400.0,
            {(r["series"], float(r["started_at"])) for r in rows if r["verdict"] == "false_alarm"},
        )

    def floors(self, keys: Sequence[str], now: float) -> dict[str, np.ndarray]:
        """Reason → the floor of each series (by ``keys``) now, as a column."""
        return floor_columns(
            self.verdicts,
            keys,
            np.array([now]),
            max_raise=self.max_raise,
            half_life=self.half_life,
        )


def floor_columns(
    verdicts: Sequence[Verdict],
    keys: Sequence[str],
    times: np.ndarray,
    *,
    max_raise: float,
    half_life: float,
) -> dict[str, np.ndarray]:
    """Reason → the floor under each series' threshold (rows, by ``keys``) at each of
    ``times`` (columns), in the reason's statistic units (0: none): what
    ``detector.verdict.judge`` raises thresholds to. Empty when no verdict concerns
    these series."""
    mine: dict[str, list[Verdict]] = {}
    wanted = set(keys)
    for v in verdicts:
        if v.series in wanted:
            mine.setdefault(v.series, []).append(v)
    if not mine:
        return {}
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    out: dict[str, np.ndarray] = {}
    for reason in sorted({r.reason for vs in mine.values() for v in vs for r in v.reasons}):
        grid = np.zeros((len(keys), len(times)))
        for i, key in enumerate(keys):
            vs = mine.get(key)
            if not vs:
                continue
            grid[i] = [
                floor_at(vs, reason, float(t), max_raise=max_raise, half_life=half_life)[0]
                for t in times
            ]
        if (grid > 0).any():
            out[reason] = grid
    return out
