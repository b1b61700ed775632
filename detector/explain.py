"""Z-score explainers: each names one reason why a series is anomalous.

An explainer looks at the feature arrays of all series and times at once and
returns ``Evidence`` (where it fired, the statistic, the delta, the threshold).
``reasons_at`` turns the evidence of one series at one time into ``Reason``
objects, the unit users see on gauges, events and tables.

Reasons and their statistic (the ``zscore`` field of a Reason):

- ``level_shift``: the recent mean left the baseline by ``z_thresh`` baseline sds in
  every short window (5m and 15m), and the change is a step, not a ramp;
  statistic = z of the strongest window.
- ``trend_break``: the slope of the last hour differs from the baseline slope by
  ``z_thresh`` sds over the hour and a straight line fits the hour (better than a
  step would); statistic = that slope change in sds.
- ``volatility_spike``: the dispersion of recent first differences is
  ``vol_mult`` times the baseline's; statistic = the ratio.
- ``percent_change``: the recent mean moved by ``pct_thresh`` of the baseline level,
  and the move is significant (``PCT_MIN_Z`` standard errors of that window's mean,
  so noise alone cannot do it, while a noisy business KPI that clearly halved
  still counts); statistic = the relative change.

- ``spike``: a point left the expected band (``detector.features.robust_band``: the
  median of the last 100 points ± its robust spread) by ``spike_z`` band sds, and
  the series has been outside the band for at most ``SPIKE_POINTS`` points (one
  to three: longer, and it is a shift); statistic = the point's z against the band.

``direction`` (``up``/``down``/``both``) is respected by every signed reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aiops.core import defaults
from detector.features import Features, trailing_mean
from detector.rolling import trailing_max

REASONS: tuple[str, ...] = (
    "level_shift",
    "volatility_spike",
    "trend_break",
    "percent_change",
    "spike",
)

#: percent_change also needs the change to be this many standard errors of the window mean.
PCT_MIN_Z = 4.0
#: volatility_spike and trend_break also need their statistic this many standard errors
#: beyond "no change" (matters on coarse steps, where a window holds few points).
VOL_MIN_Z = 4.5
TREND_MIN_Z = 3.5
#: level_shift: at least this share of the shortest window's points must be beyond
#: the threshold themselves.
PERSIST_SHARE = 0.5
#: Reasons that are shown but not acted on: the detector sends the webhook no event for
#: an anomaly that only they hold, and a policy rule acts on them only by naming them.
PASSIVE_REASONS = frozenset({"spike"})
#: spike: at most this many points in a row outside the expected band.
SPIKE_POINTS = 3
#: A line must fit the last hour within this many baseline sds to call it a trend.
TREND_MAX_RESID = 1.5


@dataclass(frozen=True)
class Reason:
    """Why a series is anomalous: which reason, in which window, by how much."""

    reason: str
    window: str
    zscore: float
    delta: float
    threshold: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Evidence:
    """Where one explainer fired, with its statistic and delta (arrays like the features)."""

    reason: str
    fired: np.ndarray
    window: np.ndarray  # index into Features.windows
    zscore: np.ndarray
    delta: np.ndarray
    threshold: float | np.ndarray
    strength: np.ndarray | None = None  # statistic / threshold in the bad direction (>= 1: fired)


def signed(a: np.ndarray, direction: str) -> np.ndarray:
    """The part of ``a`` that counts as bad: up keeps rises, down keeps drops, both keeps either."""
    if direction == "up":
        return a
    if direction == "down":
        return -a
    return np.abs(a)


def _ge(a: np.ndarray, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(a, nan=-np.inf) >= threshold


def _trend_like(f: Features, threshold: float, direction: str) -> np.ndarray:
    """A line fits the last hour (better than any step) and its slope broke from the baseline."""
    line = np.nan_to_num(f.resid_ratio, nan=np.inf)
    with np.errstate(invalid="ignore"):
        fits = (line <= TREND_MAX_RESID) & (line < np.nan_to_num(f.step_resid_ratio, nan=np.inf))
    bad = signed(f.trend_z, direction)
    with np.errstate(invalid="ignore", divide="ignore"):
        significant = _ge(bad / f.trend_se, TREND_MIN_Z)
    return fits & _ge(bad, threshold) & significant


class LevelShiftExplainer:
    """The recent level left the baseline as a step in every short window."""

    name = "level_shift"

    def __init__(self, *, threshold: float = defaults.Z_THRESH, direction: str = "both") -> None:
        self.threshold = threshold
        self.direction = direction

    def evaluate(self, f: Features) -> Evidence:
        names = f.windows
        confirm = names[:-1] or names
        stack = np.stack([f.z[w] for w in names])
        if self.direction == "both":
            # one sign for all windows: the sign of the longest confirming window
            sign = np.sign(np.nan_to_num(f.z[confirm[-1]]))
            bad = stack * sign
        else:
            bad = signed(stack, self.direction)
        weakest = np.min(np.stack([bad[names.index(w)] for w in confirm]), axis=0)
        # most points of the shortest window are themselves beyond the threshold: a
        # blip shorter than the window moves its mean but is not a shift
        point = (
            signed(f.point_z, self.direction) if self.direction != "both" else (f.point_z * sign)
        )
        beyond = (np.nan_to_num(point, nan=-np.inf) >= self.threshold).astype(np.float64)
        held = trailing_mean(beyond, f.short_points) >= PERSIST_SHARE
        weakest = np.where(held, weakest, 0.0)
        trend = _trend_like(f, self.threshold, self.direction)
        strength = np.where(trend, 0.0, np.nan_to_num(weakest, nan=0.0)) / self.threshold
        fired = _ge(strength, 1.0)
        best = np.argmax(np.nan_to_num(bad, nan=-np.inf), axis=0)
        z = np.take_along_axis(stack, best[None], axis=0)[0]
        delta = np.take_along_axis(np.stack([f.delta[w] for w in names]), best[None], axis=0)[0]
        return Evidence(self.name, fired & f.ready, best, z, delta, self.threshold, strength)


class TrendBreakExplainer:
    """The last hour follows a line whose slope breaks from the baseline's."""

    name = "trend_break"

    def __init__(self, *, threshold: float = defaults.Z_THRESH, direction: str = "both") -> None:
        self.threshold = threshold
        self.direction = direction

    def evaluate(self, f: Features) -> Evidence:
        fired = _trend_like(f, self.threshold, self.direction) & f.ready
        window = np.full(fired.shape, len(f.windows) - 1)
        line = np.nan_to_num(f.resid_ratio, nan=np.inf)
        with np.errstate(invalid="ignore"):
            fits = (line <= TREND_MAX_RESID) & (
                line < np.nan_to_num(f.step_resid_ratio, nan=np.inf)
            )
        strength = np.where(fits, np.nan_to_num(signed(f.trend_z, self.direction)), 0.0)
        return Evidence(
            self.name,
            fired,
            window,
            f.trend_z,
            f.slope_delta,
            self.threshold,
            strength / self.threshold,
        )


class VolatilityExplainer:
    """Recent first differences are ``threshold`` times more dispersed than the baseline's."""

    name = "volatility_spike"

    def __init__(self, *, threshold: float = defaults.VOL_MULT, window: int = 1) -> None:
        self.threshold = threshold
        self.window = window

    def evaluate(self, f: Features) -> Evidence:
        with np.errstate(invalid="ignore", divide="ignore"):
            significant = _ge((f.vol_ratio - 1.0) / f.vol_se, VOL_MIN_Z)
        fired = _ge(f.vol_ratio, self.threshold) & significant & f.ready
        window = np.full(fired.shape, min(self.window, len(f.windows) - 1))
        delta = f.vol_recent - f.vol_baseline
        strength = np.nan_to_num(f.vol_ratio) / self.threshold
        return Evidence(self.name, fired, window, f.vol_ratio, delta, self.threshold, strength)


class PercentChangeExplainer:
    """The recent level moved by ``threshold`` of the baseline level (and beyond the noise)."""

    name = "percent_change"

    def __init__(
        self,
        *,
        threshold: float = defaults.PCT_THRESH,
        direction: str = "both",
        window: int = 1,
        min_z: float = PCT_MIN_Z,
    ) -> None:
        self.threshold = threshold
        self.direction = direction
        self.window = window
        self.min_z = min_z

    def evaluate(self, f: Features) -> Evidence:
        idx = min(self.window, len(f.windows) - 1)
        w = f.windows[idx]
        fired = _ge(signed(f.pct_change, self.direction), self.threshold)
        fired &= _ge(signed(f.zse[w], self.direction), self.min_z)
        if self.direction == "both":
            fired &= np.sign(f.pct_change) == np.sign(f.zse[w])
        window = np.full(fired.shape, idx)
        strength = np.minimum(
            np.nan_to_num(signed(f.pct_change, self.direction)) / self.threshold,
            np.nan_to_num(signed(f.zse[w], self.direction)) / self.min_z,
        )
        strength = np.where(fired, np.maximum(strength, 1.0), np.minimum(strength, 0.999))
        return Evidence(
            self.name, fired & f.ready, window, f.pct_change, f.delta[w], self.threshold, strength
        )


class SpikeExplainer:
    """A short excursion: the point left the expected band by ``threshold`` band sds and
    the series has been outside the band for at most ``SPIKE_POINTS`` points."""

    name = "spike"

    def __init__(
        self,
        *,
        threshold: float = defaults.SPIKE_Z,
        band: float = defaults.Z_THRESH,
        direction: str = "both",
        hold: bool = False,
    ) -> None:
        self.threshold = threshold
        self.band = band
        self.direction = direction
        #: holding an anomaly (the relaxed thresholds): outside the band is enough, for
        #: as long as it lasts, until another reason explains it (``detector.verdict``)
        self.hold = hold

    def evaluate(self, f: Features) -> Evidence:
        bad = np.nan_to_num(signed(f.band_z, self.direction), nan=0.0)
        with np.errstate(invalid="ignore"):
            outside = (np.abs(f.band_z) >= self.band).astype(np.float64)
        short = trailing_mean(outside, SPIKE_POINTS + 1) < 1.0 - 1e-9
        known = np.isfinite(f.band_center)
        strength = np.where(known, bad, 0.0) / self.threshold
        if self.hold:
            fired = _ge(bad, self.band) & known & f.ready
        else:
            fired = _ge(strength, 1.0) & _ge(bad, self.band) & short & known & f.ready
        window = np.zeros(fired.shape, dtype=np.int64)
        delta = f.value - f.band_center
        return Evidence(self.name, fired, window, f.band_z, delta, self.threshold, strength)


Explainer = (
    LevelShiftExplainer
    | TrendBreakExplainer
    | VolatilityExplainer
    | PercentChangeExplainer
    | SpikeExplainer
)


def default_explainers(
    *,
    z_thresh: float,
    vol_mult: float,
    pct_thresh: float,
    direction: str,
    spike_z: float = defaults.SPIKE_Z,
    hold: bool = False,
) -> list[Explainer]:
    """The five explainers with the configured thresholds, for one query's direction."""
    return [
        LevelShiftExplainer(threshold=z_thresh, direction=direction),
        VolatilityExplainer(threshold=vol_mult),
        TrendBreakExplainer(threshold=z_thresh, direction=direction),
        PercentChangeExplainer(threshold=pct_thresh, direction=direction),
        SpikeExplainer(threshold=spike_z, band=z_thresh, direction=direction, hold=hold),
    ]


def evaluate(explainers: list[Explainer], f: Features) -> list[Evidence]:
    return [e.evaluate(f) for e in explainers]


def novelty(
    strength: np.ndarray,
    history: int,
    gap: int = 0,
    min_count: int = 20,
    past: np.ndarray | None = None,
) -> np.ndarray:
    """Strength over the largest strength of the same series in the ``history`` values
    that end ``gap`` values ago (``past``: the values that set the bar, default the
    strengths themselves; +inf while fewer than ``min_count``): above 1 means
    nothing this strong happened recently. A pattern that recurs (a daily ramp the
    baseline cannot follow) stops being news; a first-of-its-kind change is.
    """
    s = np.maximum(np.nan_to_num(strength, nan=0.0), 0.0)
    p = s if past is None else np.maximum(np.nan_to_num(past, nan=0.0), 0.0)
    past = trailing_max(p, gap + 1, history, min_count)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = s / np.maximum(past, 1e-9)
    return np.where(np.isfinite(past), out, np.inf)


def any_fired(evidence: list[Evidence]) -> np.ndarray:
    out = np.zeros_like(evidence[0].fired)
    for ev in evidence:
        out |= ev.fired
    return out


def reasons_at(evidence: list[Evidence], windows: tuple[str, ...], i: int, t: int) -> list[Reason]:
    """The reasons that fired for series ``i`` at time index ``t``."""
    out = []
    for ev in evidence:
        if ev.fired[i, t]:
            out.append(
                Reason(
                    reason=ev.reason,
                    window=windows[int(ev.window[i, t])],
                    zscore=round(float(ev.zscore[i, t]), 4),
                    delta=float(ev.delta[i, t]),
                    threshold=float(
                        ev.threshold if np.isscalar(ev.threshold) else ev.threshold[i, t]
                    ),
                )
            )
    return out
