"""THE feature function: recent windows against a trailing baseline, for every series at once.

``compute_features(values, spec)`` is the only place features are computed. The
live detector takes the last column, training takes the baseline columns and
backtests take every column, so what is scored live is exactly what was trained
and evaluated.

For every series ``s`` and time index ``t`` (columns of ``values``) it uses only
``values[s, :t + 1]``: features are causal, which makes streaming backtests a
plain slice of one vectorised call.

The baseline of time ``t`` is the ``B`` points that end just before the longest
recent window (``t - W``): an incident that started inside the recent windows is
never part of its own baseline. All window statistics come from prefix sums along
the time axis, so the cost is O(series × points) whatever the window lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from aiops.core.durations import format_duration
from detector.rolling import trailing_median

#: Recent windows, shortest first: (seconds, at least this many points). At a 1-minute
#: step they are 5m, 15m and 1h; at coarser steps they keep enough points to mean
#: something (5-minute data: 15m, 30m, 1h; hourly data: 3h, 6h, 12h).
DEFAULT_WINDOWS: tuple[tuple[float, int], ...] = ((300.0, 3), (900.0, 6), (3600.0, 12))


def feature_names(window_labels: tuple[str, ...] = ("5m", "15m", "1h")) -> tuple[str, ...]:
    """Columns of the matrix the IsolationForest sees, in this order."""
    return (*(f"z_{name}" for name in window_labels), "trend_z", "log_vol_ratio", "pct_change")


#: Calendar columns a trained model adds where its query asks for seasonality: the
#: hour of day (and day of week) as points on a circle, so 23:59 is next to 00:00.
CALENDAR_FEATURES: dict[str, tuple[str, ...]] = {
    "daily": ("hour_sin", "hour_cos"),
    "weekly": ("hour_sin", "hour_cos", "dow_sin", "dow_cos"),
}


def calendar_columns(times: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    """The calendar columns ``names`` (from CALENDAR_FEATURES) at Unix ``times`` (UTC)."""
    times = np.asarray(times, dtype=np.float64)
    hour = 2 * np.pi * (times % 86400.0) / 86400.0
    # 1970-01-01 was a Thursday: shift so that Monday 00:00 is angle 0
    dow = 2 * np.pi * ((times + 3 * 86400.0) % (7 * 86400.0)) / (7 * 86400.0)
    table = {
        "hour_sin": np.sin(hour),
        "hour_cos": np.cos(hour),
        "dow_sin": np.sin(dow),
        "dow_cos": np.cos(dow),
    }
    try:
        return [table[n] for n in names]
    except KeyError as exc:
        raise ValueError(f"unknown calendar feature {exc.args[0]!r}") from None


#: The expected band (``robust_band``): at least this many known points, a scale never
#: below this share of the series' usual one (over the last BAND_MEMORY points).
BAND_MIN_POINTS = 20
BAND_FLOOR_SHARE = 0.5
BAND_MEMORY = 2000
#: values beyond this magnitude count as missing (their squares would overflow float64)
MAX_ABS = 1e150
#: |d| of first differences is capped at this many baseline standard deviations
#: before averaging, so one jump (a level shift) does not read as volatility.
VOL_CAP_SIGMAS = 4.0
_HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)
#: offsets around each past period that the seasonal profile takes the median of
SEASON_NEIGHBOURS: tuple[int, ...] = (-1, 0, 1)
_HALF_NORMAL_REL_SD = math.sqrt(math.pi / 2.0 - 1.0)


@dataclass(frozen=True)
class FeatureSpec:
    """How features are computed for one query (grid step, windows, baseline length)."""

    step: float = 60.0
    windows: tuple[tuple[float, int], ...] = DEFAULT_WINDOWS
    baseline: float = 5 * 3600.0
    vol_window: int = 1  # index into windows
    pct_window: int = 1
    min_scale: float = 0.0
    rel_scale_floor: float = 1e-3
    min_baseline_points: int = 20
    detrend: bool = True
    robust_clip: float = 4.0
    scale_memory: float = 1.0  # scale floor: this share of the series' typical spread so far
    season: float = 0.0  # seconds of the seasonal period (0: none), e.g. 86400 for daily
    #: a second period each series takes instead where its profile explains more (0: none),
    #: e.g. 604800: weekly where the history shows a week (a quiet weekend), else daily
    season_alt: float = 0.0
    season_cycles: int = 3  # past periods the seasonal profile is the median of
    season_gain: float = 0.7  # the profile is used where it cuts the spread below this share
    season_band: float = 0.1  # ± around season_gain, features blend from seasonal to plain
    band_points: int = 100  # grid points behind the expected band (robust_band)

    def points(self, seconds: float) -> int:
        return max(1, round(seconds / self.step))

    @property
    def window_points(self) -> dict[str, int]:
        """Window label (its real duration, e.g. ``15m``) → points, shortest first."""
        out: dict[str, int] = {}
        for seconds, min_points in self.windows:
            pts = max(min_points, self.points(seconds))
            out.setdefault(format_duration(pts * self.step), pts)
        return out

    @property
    def longest(self) -> int:
        return max(self.window_points.values())

    @property
    def baseline_points(self) -> int:
        return max(self.points(self.baseline), 4 * self.longest, 2)

    @property
    def season_points(self) -> int:
        """Points per seasonal period; 0 when seasonality is off or the period is too short."""
        if self.season <= 0:
            return 0
        pts = round(self.season / self.step)
        return pts if pts >= 2 * self.longest else 0

    @property
    def alt_points(self) -> int:
        """Points per alternative period (``season_alt``); 0 when off or too short."""
        if self.season <= 0 or self.season_alt <= 0:
            return 0
        pts = round(self.season_alt / self.step)
        return pts if pts >= 2 * self.longest and pts != self.season_points else 0

    @property
    def periods(self) -> tuple[int, ...]:
        """The seasonal periods in points, the main one first (empty: not seasonal)."""
        main = self.season_points
        if main == 0:
            return ()
        return (main, self.alt_points) if self.alt_points else (main,)

    @property
    def warmup_points(self) -> int:
        """Points of history a series needs before it is scored."""
        return self.longest + max(self.min_baseline_points, 2)


@dataclass
class Features:
    """Feature arrays, each of shape (n_series, n_times)."""

    windows: tuple[str, ...]
    value: np.ndarray
    mean: dict[str, np.ndarray]
    z: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    baseline: np.ndarray
    scale: np.ndarray
    slope_delta: np.ndarray  # recent minus baseline slope, value units per longest window
    trend_z: np.ndarray  # slope_delta / scale
    resid_ratio: np.ndarray  # residual sd of a line through the longest window / scale
    step_resid_ratio: np.ndarray  # residual sd of the best two-level step there / scale
    vol_ratio: np.ndarray  # recent / baseline dispersion of first differences
    point_z: np.ndarray  # each point against its own time's baseline, in baseline sds
    return_z: np.ndarray  # shortest window against the older half of the baseline, in sds
    band_center: np.ndarray  # the expected band's middle: trailing median (see robust_band)
    band_scale: np.ndarray  # its robust sd (MAD of the trailing points, with floors)
    band_z: np.ndarray  # each point against the expected band, in band sds (signed)
    held_z: np.ndarray  # each point against the band of one longest window earlier
    vol_se: np.ndarray  # standard error of vol_ratio under "no change" (fewer points: larger)
    trend_se: np.ndarray  # standard error of trend_z under "no change"
    vol_recent: np.ndarray
    vol_baseline: np.ndarray
    pct_change: np.ndarray
    zse: dict[str, np.ndarray]  # significance: delta over the standard error of the window mean
    ready: np.ndarray  # bool: enough history and recent data to score
    mature: np.ndarray  # bool: the baseline holds at least half its full length
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    short_points: int = 1  # points in the shortest recent window

    def matrix(
        self, direction: str = "both", at: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """Rows for the IsolationForest, columns as ``feature_names``.

        ``at`` = (series indices, time indices) picks rows; without it every
        (series, time) pair is a row, series-major. Signed features are turned so
        that "bad" is positive for ``up``/``down``.
        """

        def pick(a: np.ndarray) -> np.ndarray:
            return a.reshape(-1) if at is None else a[at]

        sign = -1.0 if direction == "down" else 1.0
        cols = [sign * pick(self.z[name]) for name in self.windows]
        cols += [
            sign * pick(self.trend_z),
            np.log(np.maximum(pick(self.vol_ratio), 1e-3)),
            sign * np.clip(pick(self.pct_change), -10, 10),
        ]
        return np.clip(np.stack(cols, axis=-1), -1e3, 1e3)

    def names(self, calendar: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Column names of ``design`` (and of ``matrix`` without calendar columns)."""
        return (*feature_names(self.windows), *calendar)

    def design(
        self,
        direction: str,
        times: np.ndarray,
        calendar: tuple[str, ...] = (),
        at: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """``matrix`` plus calendar columns: the rows a trained per-series model sees.

        ``times`` holds the Unix time of every column (time index) of these features.
        """
        base = self.matrix(direction, at)
        if not calendar:
            return base
        n_series, n_times = self.ready.shape
        times = np.asarray(times, dtype=np.float64)
        t = np.broadcast_to(times, (n_series, n_times))
        t = t.reshape(-1) if at is None else t[at]
        return np.column_stack([base, *calendar_columns(t, calendar)])

    def take(self, cols: slice | np.ndarray) -> Features:
        """The same features at some time columns only (e.g. the latest: ``slice(-1, None)``)."""

        def t(a: np.ndarray) -> np.ndarray:
            return a[:, cols]

        return Features(
            windows=self.windows,
            value=t(self.value),
            mean={k: t(v) for k, v in self.mean.items()},
            z={k: t(v) for k, v in self.z.items()},
            delta={k: t(v) for k, v in self.delta.items()},
            baseline=t(self.baseline),
            scale=t(self.scale),
            slope_delta=t(self.slope_delta),
            trend_z=t(self.trend_z),
            resid_ratio=t(self.resid_ratio),
            step_resid_ratio=t(self.step_resid_ratio),
            vol_ratio=t(self.vol_ratio),
            point_z=t(self.point_z),
            return_z=t(self.return_z),
            band_center=t(self.band_center),
            band_scale=t(self.band_scale),
            band_z=t(self.band_z),
            held_z=t(self.held_z),
            vol_se=t(self.vol_se),
            trend_se=t(self.trend_se),
            vol_recent=t(self.vol_recent),
            vol_baseline=t(self.vol_baseline),
            pct_change=t(self.pct_change),
            zse={k: t(v) for k, v in self.zse.items()},
            ready=t(self.ready),
            mature=t(self.mature),
            extra={k: t(v) for k, v in self.extra.items()},
            short_points=self.short_points,
        )


def _prefix(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], a.shape[1] + 1))
    np.cumsum(a, axis=1, out=out[:, 1:])
    return out


def _window(p: np.ndarray, lag: int, width: int) -> np.ndarray:
    """For every t: the sum over columns [t + 1 - lag - width, t + 1 - lag), clipped at 0.

    ``p[:, t + 1 - lag] - p[:, t + 1 - lag - width]`` (``p`` the prefix sums of
    ``_prefix``, an index below 0 counting as 0), without building either term.
    """
    n_times = p.shape[1] - 1
    out = np.empty((p.shape[0], n_times))
    a = min(max(lag - 1, 0), n_times)  # before a: both terms are 0
    b = min(max(lag + width - 1, a), n_times)  # before b: only the first is not
    out[:, :a] = 0.0
    out[:, a:b] = p[:, a + 1 - lag : b + 1 - lag]
    np.subtract(
        p[:, b + 1 - lag : n_times + 1 - lag],
        p[:, b + 1 - lag - width : n_times + 1 - lag - width],
        out=out[:, b:],
    )
    return out


def _line_stats(
    n: np.ndarray, sk: np.ndarray, skk: np.ndarray, sy: np.ndarray, sky: np.ndarray, syy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slope, residual sd and sd around the mean from window sums."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sxx = skk - sk * sk / n
        sxy = sky - sk * sy / n
        syy_c = np.maximum(syy - sy * sy / n, 0.0)
        slope = np.where(sxx > 0, sxy / sxx, np.nan)
        sse = np.maximum(syy_c - np.nan_to_num(slope) * sxy, 0.0)
        resid = np.sqrt(sse / np.maximum(n - 2, 1))
        sd = np.sqrt(syy_c / np.maximum(n - 1, 1))
    return slope, resid, sd


def _best_step_resid(
    pc: np.ndarray,
    p1: np.ndarray,
    n: np.ndarray,
    sy: np.ndarray,
    syy: np.ndarray,
    longest: int,
    wpts: dict[str, int],
) -> np.ndarray:
    """Residual sd of the best two-level step through the longest window.

    Splits are tried at sixths of the window and at the shorter windows' edges: a
    ramp fits a line better than any step, a level shift fits a step better.
    """
    splits = {round(longest * f / 6) for f in range(1, 6)} | set(wpts.values())
    splits = {s for s in splits if 0 < s < longest}
    with np.errstate(divide="ignore", invalid="ignore"):
        ss = np.maximum(syy - sy * sy / n, 0.0)
        best = np.full(n.shape, np.inf)
        for s in sorted(splits):
            n2, s2 = _window(pc, 0, s), _window(p1, 0, s)
            n1, s1 = n - n2, sy - s2
            between = np.where((n1 > 0) & (n2 > 0), (s1 / n1 - s2 / n2) ** 2 * n1 * n2 / n, 0.0)
            best = np.fmin(best, ss - between)
        return np.sqrt(np.maximum(best, 0.0) / np.maximum(n - 2, 1))


def weekly_choice(parts: list[np.ndarray], week: int) -> np.ndarray:
    """Where each series takes the alternative period's profile (weekly): where it
    predicted the last whole such period better than the daily one did, by
    ``WEEKLY_GAIN``. Judged over a week, not the features' horizon, so that a Saturday
    is not judged on a Friday and the choice holds from one hour to the next; it
    needs a week to judge and one before it to predict that week: two and a half
    weeks of history at least (training stores the choice at the end of its history)."""
    whole = [_hold_last(seasonal_fit(part, week)) for part in parts]
    with np.errstate(invalid="ignore"):
        daily = np.nan_to_num(whole[0], nan=np.inf)
        return np.isfinite(whole[1]) & (whole[1] < WEEKLY_GAIN * daily)


#: The alternative period's profile (weekly) is taken where it left at most this share
#: of the daily one's residual spread over the last week: the daily profile, three days
#: old at most, follows a trend sooner and stays where a week adds little.
WEEKLY_GAIN = 0.8


def compute_features(
    values: np.ndarray,
    spec: FeatureSpec,
    past: np.ndarray | None = None,
    alt: np.ndarray | None = None,
) -> Features:
    """Features of every series at every time index; see the module docstring.

    With a seasonal period (``spec.season``), features are computed twice: on the
    values, and on the residuals from their seasonal profile (the median of the same
    time of day in the last ``season_cycles`` periods, see ``seasonal_profile``). With
    an alternative period too (``spec.season_alt``, weekly), each (series, time) takes
    the profile of the period that predicted its last period better (a shop whose
    weekends are quiet: weekly, once three weeks are known; otherwise daily).
    Each (series, time) takes the seasonal variant where the profile explains the
    series: its residuals spread less than ``season_gain`` times the values over the
    baseline (which ends one longest window ago, so an ongoing incident does not
    choose its own yardstick). A daily peak is then not an incident, and a day that
    misses its peak is.

    The profile needs the values one, two, … periods before each time: a backtest
    or training run over a long history has them in ``values`` itself; the live
    detector, which fetches only its lookback, passes them as ``past`` (see
    ``past_slices``: the slices of each period of ``spec.periods`` in turn), and gets
    the same features at the newest point. Its window is too short to choose the
    weekly profile (the choice looks at a whole week): it passes the choice the nightly
    retrain stored for each series as ``alt`` (n_series,), and with it the weekly slices.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    given_alt = alt
    if x.shape[1] == 0:  # no point yet: the features of one missing point, without it
        return _compute(np.full((x.shape[0], 1), np.nan), spec).take(slice(0, 0))
    plain = _compute(x, spec)
    periods = spec.periods
    if not periods:
        return plain
    cycles = spec.season_cycles
    if past is None:
        if x.shape[1] <= periods[0] + spec.warmup_points:
            return plain
        past = np.concatenate([past_slices(x, p, cycles) for p in periods])
    elif past.shape != (len(periods) * cycles, x.shape[0], x.shape[1] + 2 * NEIGHBOUR_REACH):
        raise ValueError(f"past slices have shape {past.shape}, values {x.shape}")
    parts = [past[k * cycles : (k + 1) * cycles] for k in range(len(periods))]
    # where a gap in the last period hides how well the profile predicts, the last
    # judgement holds (a scrape outage yesterday does not switch today's profile off)
    horizon = spec.baseline_points + spec.longest
    ratios = [_hold_last(seasonal_fit(part, horizon)) for part in parts]
    ratio = ratios[0]
    alt = np.zeros(x.shape, dtype=bool)
    if len(parts) > 1 and given_alt is not None:
        alt = np.broadcast_to(np.asarray(given_alt, dtype=bool).reshape(-1, 1), x.shape)
        ratio = np.where(alt, ratios[1], ratios[0])
    elif len(parts) > 1:
        alt = weekly_choice(parts, periods[1])
        ratio = np.where(alt, ratios[1], ratios[0])
    lo, hi = spec.season_gain - spec.season_band, spec.season_gain + spec.season_band
    with np.errstate(invalid="ignore"):
        use = np.nan_to_num(np.clip((hi - ratio) / max(hi - lo, 1e-9), 0.0, 1.0))
    if not use.any():
        return plain
    # the seasonal variant only for the series that use it somewhere (the others: plain)
    rows = np.nonzero(use.any(axis=1))[0]
    x, u = x[rows], use[rows]
    profile = seasonal_profile(x, parts[0][:, rows])
    if alt[rows].any():
        profile = np.where(alt[rows], seasonal_profile(x, parts[1][:, rows]), profile)
    expected = np.nan_to_num(profile)
    # the band is never narrower than the profile's own miss at this time of day
    spread = phase_spread(parts[0][:, rows], x.shape[1])
    if alt[rows].any():
        spread = np.where(alt[rows], phase_spread(parts[1][:, rows], x.shape[1]), spread)
    seasonal = _compute(x - profile, spec, ref=expected, band_floor_at=spread)
    seasonal.value = plain.value[rows]
    seasonal.baseline = seasonal.baseline + expected
    for name, w in spec.window_points.items():
        seasonal.mean[name] = seasonal.mean[name] + trailing_mean(expected, w)
    merged = _merge(u, seasonal, _rows(plain, rows), into=plain, at=rows)
    merged.extra["seasonal"] = use
    if len(parts) > 1:
        merged.extra["weekly"] = alt.astype(np.float64)  # the alternative period chosen
    return merged


#: The largest band z kept (beyond any threshold; bounds the window sums over it).
Z_CAP = 1e6


def robust_band(a: np.ndarray, points: int, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The expected band of every point from the ``points`` points before it (NaN: missing).

    Its middle is their median; its sd the median absolute deviation of those points
    from their own trailing medians (× 1.4826, the normal sd; the mean absolute
    deviation × 1.2533 where more than half of them sit on the median, e.g. a count
    that is mostly 0), never below ``BAND_FLOOR_SHARE`` of the sds the series usually
    has, nor below ``floor``. Medians, not means: a past spike neither moves the band
    nor widens it, and the band follows a new level after half its points. NaN where
    fewer than ``BAND_MIN_POINTS`` points are known.
    """
    finite = np.isfinite(a)
    center = trailing_median(a, 1, points)
    dev = np.abs(a - center)
    mad = trailing_median(dev, 1, points) * 1.4826
    dm = np.isfinite(dev)
    p_n, p_d = _prefix(dm.astype(np.float64)), _prefix(np.where(dm, dev, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_ad = _window(p_d, 1, points) / _window(p_n, 1, points) * 1.2533
    sd = np.where(mad > 0, mad, mean_ad)
    known = _window(_prefix(finite.astype(np.float64)), 1, points)
    sd = np.where(known >= BAND_MIN_POINTS, sd, np.nan)
    usual = trailing_median(sd, 0, BAND_MEMORY)
    sd = np.fmax(np.fmax(sd, BAND_FLOOR_SHARE * usual), floor)
    sd = np.where(known >= BAND_MIN_POINTS, sd, np.nan)
    center = np.where(known >= BAND_MIN_POINTS, center, np.nan)
    return center, sd


def counting_floor(
    raw: np.ndarray, finite: np.ndarray, center: np.ndarray, points: int
) -> np.ndarray:
    """The band sd of a count: ``sqrt(center + 1)`` (Poisson noise, one at a level of 0)
    where the ``points`` values before each point are all non-negative whole numbers
    (at least ``BAND_MIN_POINTS`` of them), else 0.

    A count that is mostly 0 has a robust spread of ~0, and a single 1 would read as a
    huge excursion (a purchase in a quiet hour, one 503 in a quiet minute); no person
    calls that a spike. Rates and ratios are rarely whole numbers: they keep their band.
    """
    with np.errstate(invalid="ignore"):
        whole = (raw >= 0) & (np.abs(raw - np.round(raw)) < 1e-9)
    other = _window(_prefix((finite & ~whole).astype(np.float64)), 1, points)
    known = _window(_prefix(finite.astype(np.float64)), 1, points)
    is_count = (other < 0.5) & (known >= BAND_MIN_POINTS)
    floor = np.sqrt(np.maximum(np.nan_to_num(center), 0.0) + 1.0)
    return np.where(is_count, floor, 0.0)


def _hold_last(a: np.ndarray) -> np.ndarray:
    """Each row's NaNs replaced by its last finite value before them (NaN before any)."""
    ok = np.isfinite(a)
    idx = np.where(ok, np.arange(a.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = a[np.arange(a.shape[0])[:, None], idx]
    return np.where(ok | ok[np.arange(a.shape[0])[:, None], idx], out, np.nan)


def trailing_mean(a: np.ndarray, width: int) -> np.ndarray:
    """Mean of each row over its last ``width`` columns (fewer at the start); no NaN."""
    p = _prefix(a)
    return _window(p, 0, width) / np.minimum(np.arange(1, a.shape[1] + 1), width)[None, :]


NEIGHBOUR_REACH = max(abs(o) for o in SEASON_NEIGHBOURS)


def past_slices(x: np.ndarray, period: int, cycles: int) -> np.ndarray:
    """The values ``j`` periods before every time of ``x`` (j = 1 … cycles), from ``x``.

    Shape (cycles, n_series, n_times + 2·reach): ``out[j-1][:, c]`` is the value at
    time index ``c - reach - j·period`` (NaN before the start), so each slice also
    covers the neighbours the profile takes. The live detector fetches the same
    slices from Prometheus (the lookback window shifted back by j periods).
    """
    n, T = x.shape
    r = NEIGHBOUR_REACH
    out = np.full((cycles, n, T + 2 * r), np.nan)
    for j in range(1, cycles + 1):
        first = j * period + r  # the first column whose time index is >= 0
        if first < T + 2 * r:
            out[j - 1][:, first:] = x[:, : T + 2 * r - first]
    return out


def _phase_median(past: np.ndarray, T: int) -> np.ndarray:
    """Median over the slices of ``past`` and their neighbours at each of ``T`` times."""
    r = NEIGHBOUR_REACH
    lags = np.concatenate([past[:, :, r + o : r + o + T] for o in SEASON_NEIGHBOURS], axis=0)
    return _median_of(lags)


def seasonal_profile(x: np.ndarray, past: np.ndarray) -> np.ndarray:
    """The expected value of every (series, time) from the same phase of past periods.

    The median of the values one, two, … periods ago and of their neighbours (a
    step keeps its edge, noise averages out), taken from ``past`` (``past_slices``).
    NaN where no past period has a value.
    """
    return _phase_median(past, x.shape[1])


def phase_spread(past: np.ndarray, T: int) -> np.ndarray:
    """How far the seasonal profile misses at each time of day: the robust sd (1.4826 ×
    the median absolute value) of the residuals of the past periods at the same phase
    and its neighbours, each period against the median of the periods before it. NaN
    with fewer than two periods.

    The expected band of a seasonal series is never narrower than this: where the busy
    hours are noisier than the quiet ones (a daily peak whose height varies), the band
    of the quiet night does not make every busy-hour wiggle a spike. From the slices
    alone (the columns a live window's slices hold), so live and backtests agree.
    """
    r = NEIGHBOUR_REACH
    cycles, n = past.shape[0], past.shape[1]
    if cycles < 2:
        return np.full((n, T), np.nan)
    misses = np.empty(((cycles - 1) * len(SEASON_NEIGHBOURS), n, T))
    k = 0
    for j in range(cycles - 1):
        resid = past[j] - _median_of(past[j + 1 :])
        for o in SEASON_NEIGHBOURS:
            np.abs(resid[:, r + o : r + o + T], out=misses[k])
            k += 1
    return 1.4826 * _median_of(misses)


def _median_of(a: np.ndarray) -> np.ndarray:
    """The median over axis 0 of the finite values (NaN where none): nanmedian without
    its Python-level overhead (NaNs sort last, the middle of the finite ones is picked)."""
    if a.shape[0] == 1:
        return a[0].copy()
    if a.shape[0] == 2:
        with np.errstate(invalid="ignore"):
            both = (a[0] + a[1]) / 2.0
        return np.where(np.isnan(a[0]), a[1], np.where(np.isnan(a[1]), a[0], both))
    k = a.shape[0]
    s = np.sort(a, axis=0)  # NaNs last: the median of the finite ones
    cnt = np.isfinite(s).sum(axis=0)
    if (cnt == k).all():
        return (s[(k - 1) // 2] + s[k // 2]) / 2.0
    lo = np.take_along_axis(s, np.maximum((cnt - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, np.maximum(cnt // 2, 0)[None], axis=0)[0]
    return np.where(cnt > 0, (lo + hi) / 2.0, np.nan)


def seasonal_fit(past: np.ndarray, horizon: int) -> np.ndarray:
    """How well the seasonal profile explains the series, judged on the last period.

    The last period's values (``past[0]``) over the ``horizon`` points ending one
    period ago are compared with what the periods before it predicted for them (the
    same median as the profile): the sd of the residuals over the sd of the values
    (below 1: the profile explains part of the movement; NaN: too little history).
    Judging the past period keeps the choice out of the hands of an ongoing
    incident (a day that misses its peak still meets the seasonal yardstick).
    """
    T = past.shape[2] - 2 * NEIGHBOUR_REACH
    if past.shape[0] < 2:
        return np.full((*past.shape[1:2], T), np.nan)
    r = NEIGHBOUR_REACH
    last = past[0][:, r : r + T]
    resid = last - _phase_median(past[1:], T)

    def spread(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(a)
        # shift by each row's first finite value: spreads are shift-free, sums stay small
        first = np.nan_to_num(a[np.arange(len(a)), np.argmax(ok, axis=1)])[:, None]
        a0 = np.where(ok, a - first, 0.0)
        n = _window(_prefix(ok.astype(np.float64)), 0, horizon)
        s1 = _window(_prefix(a0), 0, horizon)
        s2 = _window(_prefix(a0 * a0), 0, horizon)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.maximum(s2 / n - (s1 / n) ** 2, 0.0)
        return var, n

    var_x, _ = spread(last)
    var_r, n_r = spread(resid)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_r >= horizon / 2, np.sqrt(var_r / var_x), np.nan)


def _rows(f: Features, rows: np.ndarray) -> Features:
    """The features of some series (rows) only."""
    out = {}
    for fld in fields(Features):
        v = getattr(f, fld.name)
        if fld.name in ("windows", "short_points"):
            out[fld.name] = v
        elif isinstance(v, dict):
            out[fld.name] = {k: a[rows] for k, a in v.items()}
        else:
            out[fld.name] = v[rows]
    return Features(**out)


def _merge(
    use: np.ndarray,
    a: Features,
    b: Features,
    into: Features | None = None,
    at: np.ndarray | None = None,
) -> Features:
    """``a`` where ``use`` is 1, ``b`` where 0, the weighted mean between (flags: the
    majority), field by field: no jump where a series moves from one to the other.

    With ``into``, the result is written into its rows ``at`` (and ``into`` returned)."""
    whole, none, most = use >= 1.0, use <= 0.0, use >= 0.5
    between = ~whole & ~none
    w = use[between]

    def pick(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if u.dtype == bool:
            return np.where(most, u, v)
        out = np.where(whole, u, v)
        with np.errstate(invalid="ignore"):
            out[between] = w * u[between] + (1.0 - w) * v[between]
        return out

    out = {}
    for fld in fields(Features):
        u, v = getattr(a, fld.name), getattr(b, fld.name)
        if fld.name in ("windows", "short_points"):
            out[fld.name] = u
        elif isinstance(u, dict):
            out[fld.name] = {k: pick(u[k], v[k]) for k in u if k in v}
        else:
            out[fld.name] = pick(u, v)
    if into is None:
        return Features(**out)
    for name, merged in out.items():
        target = getattr(into, name)
        if isinstance(target, dict):
            for k in merged:
                target[k][at] = merged[k]
        elif isinstance(target, np.ndarray):
            target[at] = merged
    return into


def _past_median(a: np.ndarray, lag: int, horizon: int = 2000) -> np.ndarray:
    """Median of each series' values over the ``horizon`` points ending ``lag`` points ago."""
    med = trailing_median(np.where(np.isfinite(a), a, np.nan), lag, horizon)
    return np.nan_to_num(med, nan=0.0)


def _compute(
    x: np.ndarray,
    spec: FeatureSpec,
    ref: np.ndarray | None = None,
    band_floor_at: np.ndarray | None = None,
) -> Features:
    """Features of ``x``; ``ref`` (seasonal residuals) is the expected value removed from
    ``x``, added back wherever a feature is relative to the level (scale floor, percent);
    ``band_floor_at`` (n, T), where given, is a floor of the expected band's sd."""
    n_series, n_times = x.shape
    # beyond ±MAX_ABS a value's square (the variance sums) would overflow: missing
    finite = np.isfinite(x) & (np.abs(x) <= MAX_ABS)
    # Shift each row by its first finite value: sums stay small and exact enough;
    # every feature is shift-invariant except the levels, which add it back.
    first = np.argmax(finite, axis=1)
    offset = np.where(finite.any(axis=1), x[np.arange(n_series), first], 0.0)
    offset = np.nan_to_num(offset)[:, None]
    x0 = np.where(finite, x - offset, 0.0)
    m = finite.astype(np.float64)
    k = np.arange(n_times, dtype=np.float64)[None, :]

    pc, p1, p2 = _prefix(m), _prefix(x0), _prefix(x0 * x0)
    pk, pkk, pky = _prefix(m * k), _prefix(m * k * k), _prefix(x0 * k)

    wpts = spec.window_points
    longest = spec.longest
    base_w = spec.baseline_points

    def sums(lag: int, width: int) -> tuple[np.ndarray, ...]:
        return tuple(_window(p, lag, width) for p in (pc, pk, pkk, p1, pky, p2))

    def fit_baseline(p1_: np.ndarray, pky_: np.ndarray, p2_: np.ndarray) -> tuple[np.ndarray, ...]:
        bn, bk, bkk = (_window(p, longest, base_w) for p in (pc, pk, pkk))
        by, bky, byy = (_window(p, longest, base_w) for p in (p1_, pky_, p2_))
        b_slope, b_resid, b_sd = _line_stats(bn, bk, bkk, by, bky, byy)
        with np.errstate(divide="ignore", invalid="ignore"):
            b_mean0 = by / bn
            b_center = bk / bn  # mean time index of the baseline's samples
        if spec.detrend:
            # The baseline level follows the baseline's own line to the recent windows,
            # so a daily ramp is not read as a shift; noise is the sd around that line.
            # A line through a short baseline extrapolates noise: only long ones count.
            long_enough = bn >= max(2 * longest, spec.baseline_points // 2)
            trend = np.where(long_enough, np.nan_to_num(b_slope), 0.0)
            b_sd = np.where(long_enough & np.isfinite(b_slope), b_resid, b_sd)
        else:
            trend = np.zeros_like(b_mean0)
        return bn, b_slope, b_sd, b_mean0, b_center, trend

    bn, b_slope, b_sd, b_mean0, b_center, trend = fit_baseline(p1, pky, p2)
    if spec.robust_clip > 0:
        # Causal winsorising: each point enters baselines clipped to its own time's
        # baseline ± robust_clip sds, so a past spike neither drags the level nor
        # inflates the noise of the baselines after it. Recent windows stay raw.
        with np.errstate(invalid="ignore"):
            level = b_mean0 + trend * (k - b_center)
            half = spec.robust_clip * np.fmax(b_sd, max(spec.min_scale, 1e-12))
            ok = np.isfinite(level) & np.isfinite(half)
            xc = np.where(ok, np.clip(x0, level - half, level + half), x0) * m
        bn, b_slope, b_sd, b_mean0, b_center, trend = fit_baseline(
            _prefix(xc), _prefix(xc * k), _prefix(xc * xc)
        )

    def level_at(pos: np.ndarray) -> np.ndarray:
        """The baseline level (offset removed) at time index ``pos``."""
        return b_mean0 + trend * (pos - b_center)

    baseline = level_at(k) + offset
    expected = baseline if ref is None else baseline + ref
    floor = np.maximum(spec.rel_scale_floor * np.abs(expected), max(spec.min_scale, 1e-12))
    if spec.scale_memory > 0:
        # A baseline quieter than the series usually is (a flat stretch) must not turn
        # the next ordinary wiggle into a huge z: the scale never drops below a share
        # of the series' typical baseline spread so far.
        floor = np.fmax(floor, spec.scale_memory * _past_median(b_sd, spec.longest))
    scale = np.fmax(b_sd, floor)

    ready = (bn >= spec.min_baseline_points) & np.isfinite(baseline)
    with np.errstate(divide="ignore", invalid="ignore"):
        point_z = np.where(finite, (x - baseline) / scale, np.nan)
    # the band's own floor: the relative and absolute ones, not the baselines' spread
    band_floor = np.maximum(spec.rel_scale_floor * np.abs(expected), max(spec.min_scale, 1e-12))
    center, band_scale = robust_band(np.where(finite, x0, np.nan), spec.band_points, band_floor)
    # a count is never expected to be quieter than counting noise (0 → 1 is no spike)
    raw = x if ref is None else x + ref
    raw_center = center + offset + (0.0 if ref is None else ref)
    band_scale = np.fmax(band_scale, counting_floor(raw, finite, raw_center, spec.band_points))
    if band_floor_at is not None:
        band_scale = np.fmax(band_scale, np.nan_to_num(band_floor_at, nan=0.0))
    # the band as it was one longest window ago: an incident that persists does not
    # become its own yardstick before that (the episode's end needs both, verdict)
    late = longest - 1
    held_center, held_scale = np.full_like(center, np.nan), np.full_like(band_scale, np.nan)
    if n_times > late:
        held_center[:, late:] = center[:, : n_times - late]
        held_scale[:, late:] = band_scale[:, : n_times - late]
    with np.errstate(divide="ignore", invalid="ignore"):
        # capped: a count that was always 0 has a band of width ~0, and a z of 1e19
        # would swamp the window sums taken over it (prefix sums lose the small terms)
        band_z = np.clip(np.where(finite, (x0 - center) / band_scale, np.nan), -Z_CAP, Z_CAP)
        held_z = np.clip(np.where(finite, (x0 - held_center) / held_scale, np.nan), -Z_CAP, Z_CAP)

    mean: dict[str, np.ndarray] = {}
    z: dict[str, np.ndarray] = {}
    delta: dict[str, np.ndarray] = {}
    for name, w in wpts.items():
        cnt = _window(pc, 0, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = np.where(cnt >= math.ceil(w / 2), _window(p1, 0, w) / cnt, np.nan)
        mean[name] = mu + offset
        delta[name] = mu - level_at(k - (w - 1) / 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[name] = delta[name] / scale
        ready &= np.isfinite(mu)

    # Return: the shortest window against the level of the older half of the baseline
    # (before anything in its newer half, e.g. an incident that just ended).
    half = base_w // 2
    shortest_w = min(wpts.values())
    e_cnt = _window(pc, longest + half, base_w - half)
    s_cnt = _window(pc, 0, shortest_w)
    with np.errstate(divide="ignore", invalid="ignore"):
        early = np.where(
            e_cnt >= (base_w - half) / 2, _window(p1, longest + half, base_w - half) / e_cnt, np.nan
        )
        recent = np.where(
            s_cnt >= math.ceil(shortest_w / 2), _window(p1, 0, shortest_w) / s_cnt, np.nan
        )
        return_z = (recent - early) / scale

    # Trend: slope of the longest recent window against the baseline's slope.
    rn, rk, rkk, ry, rky, ryy = sums(0, longest)
    r_slope, r_resid, _ = _line_stats(rn, rk, rkk, ry, rky, ryy)
    slope_delta = (r_slope - np.nan_to_num(b_slope)) * longest
    step_resid = _best_step_resid(pc, p1, rn, ry, ryy, longest, wpts)
    with np.errstate(divide="ignore", invalid="ignore"):
        trend_z = slope_delta / scale
        # sd of a least-squares slope through rn points of unit noise, times the window
        trend_se = np.sqrt(12.0 * rn / np.maximum(rn * rn - 1.0, 1.0))
        resid_ratio = r_resid / scale
        step_resid_ratio = step_resid / scale

    # Volatility: mean |first difference| in the recent window (each capped at
    # VOL_CAP_SIGMAS baseline sds) against the baseline's sd of first differences.
    d = np.full_like(x0, np.nan)
    d[:, 1:] = np.where(finite[:, 1:] & finite[:, :-1], np.diff(x0, axis=1), np.nan)
    dm = np.isfinite(d).astype(np.float64)
    d0 = np.nan_to_num(d)
    pdc, pd1, pd2 = _prefix(dm), _prefix(d0), _prefix(d0 * d0)
    dn = _window(pdc, longest, base_w)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_mean = _window(pd1, longest, base_w) / dn
        d_var = (_window(pd2, longest, base_w) - dn * d_mean * d_mean) / np.maximum(dn - 1, 1)
        d_sd = np.sqrt(np.maximum(d_var, 0.0))
    if spec.scale_memory > 0:
        floor = np.fmax(floor, spec.scale_memory * _past_median(d_sd, spec.longest))
    d_sd = np.fmax(d_sd, floor)
    capped = np.where(dm > 0, np.minimum(np.abs(d0), VOL_CAP_SIGMAS * np.nan_to_num(d_sd)), 0.0)
    pcap = _prefix(capped)
    names = list(wpts)
    vol_name = names[min(spec.vol_window, len(names) - 1)]
    pct_name = names[min(spec.pct_window, len(names) - 1)]
    vw = wpts[vol_name]
    vn = _window(pdc, 0, vw)
    with np.errstate(divide="ignore", invalid="ignore"):
        vol_recent = np.where(vn >= max(2, math.ceil(vw / 2)), _window(pcap, 0, vw) / vn, np.nan)
        vol_recent = vol_recent / _HALF_NORMAL_MEAN
        vol_ratio = vol_recent / d_sd
        # mean |d| of m normal differences: relative sd sqrt(pi/2 - 1) / sqrt(m)
        vol_se = _HALF_NORMAL_REL_SD / np.sqrt(np.maximum(vn, 1.0))

    # Significance of each window's change: the mean of w points has a standard error
    # of scale / sqrt(n_eff), with n_eff shrunk by the lag-1 autocorrelation that
    # the ratio of difference and level variances reveals (rate() windows overlap).
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.clip(1.0 - (d_sd * d_sd) / (2.0 * scale * scale), 0.0, 0.95)
    rho = np.nan_to_num(rho, nan=0.95)
    zse = {
        name: z[name] * np.sqrt(np.maximum(1.0, w * (1.0 - rho) / (1.0 + rho)))
        for name, w in wpts.items()
    }

    base_abs = level_at(k - (wpts[pct_name] - 1) / 2.0) + offset
    if ref is not None:
        base_abs = base_abs + trailing_mean(ref, wpts[pct_name])
    base_abs = np.abs(base_abs)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(base_abs > 1e-12, delta[pct_name] / base_abs, np.nan)

    return Features(
        windows=tuple(wpts),
        value=np.where(finite, x, np.nan),
        mean=mean,
        z=z,
        delta=delta,
        baseline=baseline,
        scale=scale,
        slope_delta=slope_delta,
        trend_z=trend_z,
        resid_ratio=resid_ratio,
        step_resid_ratio=step_resid_ratio,
        vol_ratio=vol_ratio,
        point_z=point_z,
        return_z=return_z,
        band_center=center + offset + (0.0 if ref is None else ref),
        band_scale=band_scale,
        band_z=band_z,
        held_z=held_z,
        vol_se=vol_se,
        trend_se=trend_se,
        vol_recent=vol_recent,
        vol_baseline=d_sd,
        pct_change=pct,
        zse=zse,
        ready=ready,
        mature=ready & (bn >= max(spec.min_baseline_points, spec.baseline_points // 2)),
        short_points=min(wpts.values()),
    )
