"""A labelled incident suite for SLO and KPI metrics, and its scoring.

``incident_cases()`` generates, deterministically (one numpy seed per case), series
that look like what the default catalogue's queries return at a 60 s step:

- counters scraped every 15 s (requests and 5xx by app, a latency histogram, shop
  counters) turned into ``rate(...[2m])`` the way Prometheus does it: the increase
  between the samples of each 2-minute window, reset-aware, NaN when a window holds
  fewer than two samples (scrape gaps). ``success_rate`` and ``error_budget_burn``
  are ratios of those rates; ``latency_p99`` is ``histogram_quantile(0.99, ...)``
  over the Prometheus client's default buckets (lognormal latencies);
  ``checkouts``, ``sessions`` and ``revenue`` are rates of Poisson counters;
- a daily profile (a night trough, a steep morning ramp, a lunch plateau, an
  evening peak) set by each case's clock time — half a consumer shop's swing
  (peak/trough ≈ 1.8) unless a case says otherwise, the full swing (≈ 3.7) in the
  daily look-alikes — a slow "weather" wobble, and noise that follows the level
  because it comes from counting (fewer requests at night: noisier ratios);
- incidents injected into the process (error probability, latency median or the
  KPI's rate), not painted on the result: a level shift, a volatility spike, a
  trend break, a percent change — and look-alikes a human would not page for.

Each case states its incident window (rows) and the reason a human on-call would
give, or ``None`` for a look-alike. ``case_results`` replays every case through
``training.runner.backtest_series`` — what ``aiops backtest`` runs, one series per
call as for a CSV file — with the default catalogue's query of its metric (direction,
``min_scale``), and ``evaluate`` condenses the per-case results into precision and
recall per reason.

Scoring rules (per case):

- the incident window is extended by ``TOLERANCE`` rows after its end;
- **detected**: some row inside the extended window is anomalous; the **reason is
  right** when the expected reason appears on one of those rows;
- **false alarm**: an *episode* (a run of anomalous rows) that reaches past the
  warm-up and does not begin inside the extended window — for a look-alike, any
  episode after the warm-up. An episode that begins with the incident and outlasts
  it is the incident's. The reasons of false alarms are false positives of those
  reasons, counted once per case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.special import ndtr

from aiops.core.settings import Settings, load_settings
from detector.catalogue import DEFAULT_QUERIES, Query
from detector.explain import REASONS
from training.runner import SeriesInput, backtest_series

STEP = 60.0  # seconds between rows (the detector's default step)
SCRAPE = 15.0  # seconds between scrapes of the simulated targets
RATE_WINDOW = 120.0  # rate(...[2m])
N_POINTS = 600  # 10 hours: the 6 h lookback, then the incidents
HISTORY_DAYS = 3  # quiet days before them: what Prometheus holds for the seasonal profile
HISTORY = HISTORY_DAYS * 1440  # their rows
TOLERANCE = 5  # rows after a window's end that still count as detecting it
ORIGIN = pd.Timestamp("2024-03-04")  # a Monday; each case starts at its own clock time

_PER_STEP = round(STEP / SCRAPE)
_PER_WINDOW = round(RATE_WINDOW / SCRAPE)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_SIGMA = 0.54  # lognormal sigma of one request's latency: p99 ≈ 3.5 × median
ORDER_MEAN, ORDER_SIGMA = 60.0, 0.6  # euros per checkout
SLO = 0.999  # error_budget_burn is the 5xx ratio over 1 - SLO

#: Which way is bad, per metric: the default catalogue's directions.
DIRECTIONS = {q.name: q.direction for q in DEFAULT_QUERIES}


# --------------------------------------------------------------------------- effects
# Effects act on the case's *driver*, sampled at every scrape: the 5xx probability
# (success_rate, error_budget_burn), the latency median (latency_p99) or the rate of
# the KPI counter (checkouts, sessions, revenue). Times are minutes from the start.


@dataclass(frozen=True)
class Shift:
    """The driver is multiplied by ``factor`` for ``minutes`` from ``at``."""

    at: float
    minutes: float
    factor: float

    def factor_at(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where((t >= self.at) & (t < self.at + self.minutes), self.factor, 1.0)


@dataclass(frozen=True)
class Ramp:
    """From ``at`` the driver's factor moves linearly to ``factor`` over ``minutes``,
    then the system recovers (a restart, a rollback)."""

    at: float
    minutes: float
    factor: float

    def factor_at(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        inside = (t >= self.at) & (t < self.at + self.minutes)
        return np.where(inside, 1.0 + (self.factor - 1.0) * (t - self.at) / self.minutes, 1.0)


@dataclass(frozen=True)
class Flap:
    """A ``share`` of the minutes in the span are hit by ``factor`` (intermittent trouble)."""

    at: float
    minutes: float
    factor: float
    share: float

    def factor_at(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        minute = np.floor(t).astype(np.int64)
        hit = rng.random(int(minute.max() - minute.min()) + 1) < self.share
        inside = (t >= self.at) & (t < self.at + self.minutes)
        return np.where(inside & hit[minute - minute.min()], self.factor, 1.0)


@dataclass(frozen=True)
class Jitter:
    """Each minute of the span gets its own lognormal factor of log-sd ``sigma`` (mean 1)."""

    at: float
    minutes: float
    sigma: float

    def factor_at(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        minute = np.floor(t).astype(np.int64)
        z = rng.standard_normal(int(minute.max() - minute.min()) + 1)[minute - minute.min()]
        inside = (t >= self.at) & (t < self.at + self.minutes)
        return np.where(inside, np.exp(self.sigma * z - self.sigma**2 / 2.0), 1.0)


@dataclass(frozen=True)
class Drift:
    """A slow linear drift over the whole series, to ``factor`` at its end."""

    factor: float

    def factor_at(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return 1.0 + (self.factor - 1.0) * np.clip(t / (N_POINTS - 1), 0.0, 1.0)


@dataclass(frozen=True)
class Gap:
    """No scrape succeeds for ``minutes`` from ``at`` (a network partition, a restart)."""

    at: float
    minutes: float


@dataclass(frozen=True)
class Reset:
    """The target restarts at ``at``: two scrapes are missed and every counter restarts at 0."""

    at: float


@dataclass(frozen=True)
class Outlier:
    """One row of the result is multiplied by ``factor`` (a single bad evaluation)."""

    at: int
    factor: float


Effect = Shift | Ramp | Flap | Jitter | Drift | Gap | Reset | Outlier
_DRIVER_EFFECTS = (Shift, Ramp, Flap, Jitter, Drift)


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class CaseSpec:
    """A case before generation: the metric, the story and its effects."""

    name: str
    metric: str
    expected: str | None
    seed: int
    start_hour: float  # clock time of the first row (sets the daily profile)
    effects: tuple[Effect, ...] = ()
    level: float | None = None  # the metric's driver level (default per metric)
    daily: float = 0.5  # swing of the daily profile (1: a consumer shop's full day/night swing)
    story: str = ""


@dataclass
class IncidentCase:
    """A generated series with its label."""

    name: str
    metric: str
    direction: str
    timestamps: pd.DatetimeIndex
    values: np.ndarray
    window: tuple[int, int] | None  # [start, end) rows of the incident; None: look-alike
    expected: str | None  # the reason a human would give; None: must not fire
    seed: int
    story: str = ""
    effects: tuple[Effect, ...] = field(default=(), repr=False)
    history: int = HISTORY  # leading rows of quiet days; windows count from the row after

    @property
    def positive(self) -> bool:
        return self.expected is not None

    @property
    def judged(self) -> np.ndarray:
        """The values of the judged part (the last ``N_POINTS`` rows)."""
        return self.values[self.history :]


_DEFAULT_LEVEL = {
    "success_rate": 0.002,  # 5xx probability: 99.8 %
    "error_budget_burn": 0.0006,  # 5xx probability: burn 0.6 against 99.9 %
    "latency_p99": 0.09,  # median seconds: p99 ≈ 0.32 s
    "checkouts": 0.75,  # per second
    "sessions": 25.0,  # per second
    "revenue": 0.75,  # checkouts per second, ~60 EUR each
}
_REQUESTS_PER_SECOND = 30.0  # traffic of the app behind the SLO metrics
_WEATHER = {"error": 0.15, "latency": 0.05, "kpi": 0.03}  # log-sd of the slow wobble
_WEATHER_MINUTES = 30.0  # its correlation time


#: Relative load per clock hour of a consumer web shop (00:00 … 23:00): a night trough
#: near 04:00, a steep morning ramp, a lunch plateau, an evening peak at ~20:00.
HOURLY_LOAD = (
    0.55, 0.42, 0.35, 0.31, 0.30, 0.33, 0.42, 0.56, 0.72, 0.84, 0.92, 0.97,
    1.00, 0.98, 0.93, 0.91, 0.92, 0.95, 1.00, 1.07, 1.12, 1.08, 0.92, 0.72,
)  # fmt: skip
_HARMONICS = 4  # smooth enough: the curve stays within a few % of the hourly values


def daily_profile(hours: np.ndarray, amplitude: float = 1.0) -> np.ndarray:
    """Load relative to the daily mean at clock ``hours`` (``HOURLY_LOAD``, trigonometric
    interpolation); ``amplitude`` scales the swing (1: the full shop profile)."""
    coef = np.fft.rfft(np.array(HOURLY_LOAD)) / len(HOURLY_LOAD)
    theta = 2.0 * np.pi * np.asarray(hours, dtype=np.float64) / 24.0
    curve = np.full(theta.shape, coef[0].real)
    for k in range(1, _HARMONICS + 1):
        curve += 2.0 * (coef[k] * np.exp(1j * k * theta)).real
    return 1.0 + amplitude * (curve / coef[0].real - 1.0)


def _weather(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A mean-1 lognormal AR(1) factor per scrape, correlated over ``_WEATHER_MINUTES``."""
    phi = math.exp(-SCRAPE / (_WEATHER_MINUTES * 60.0))
    e = rng.standard_normal(n) * sigma * math.sqrt(1.0 - phi * phi)
    a, _ = lfilter([1.0], [1.0, -phi], e, zi=[phi * rng.standard_normal() * sigma])
    return np.exp(a - sigma * sigma / 2.0)


def prometheus_rate(counters: np.ndarray, up: np.ndarray, n: int) -> np.ndarray:
    """``rate(c[2m])`` every step: reset-aware increase over the window's samples / their span."""
    out = np.full((counters.shape[0], n), np.nan)
    for i in range(n):
        lo = i * _PER_STEP
        idx = np.flatnonzero(up[lo : lo + _PER_WINDOW]) + lo
        if len(idx) < 2:
            continue
        c = counters[:, idx]
        d = np.diff(c, axis=1)
        d = np.where(d < 0, c[:, 1:], d)  # a reset: the counter restarted from 0
        out[:, i] = d.sum(axis=1) / ((idx[-1] - idx[0]) * SCRAPE)
    return out


def counter_values(
    increments: np.ndarray, resets: list[int], rng: np.random.Generator
) -> np.ndarray:
    """Counter values from per-scrape increments (last axis), restarting at each reset."""
    c = np.cumsum(increments, axis=-1) + rng.integers(10_000, 1_000_000)
    for r in sorted(resets):
        c[..., r:] -= c[..., r - 1 : r]
    return c.astype(np.float64)


def histogram_quantile(q: float, rates: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """Prometheus' ``histogram_quantile`` over cumulative bucket rates (buckets × time)."""
    total = rates[-1]
    rank = q * total
    b = np.argmax(rates >= rank[None, :], axis=0)
    upper_all = np.array([*bounds, bounds[-1]])
    lower_all = np.array([0.0, *bounds])
    below = np.where(b > 0, rates[np.maximum(b - 1, 0), np.arange(rates.shape[1])], 0.0)
    inside = rates[b, np.arange(rates.shape[1])] - below
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(inside > 0, (rank - below) / inside, 1.0)
    value = lower_all[b] + (upper_all[b] - lower_all[b]) * frac
    value = np.where(b == len(bounds), bounds[-1], value)  # the +Inf bucket
    return np.where(np.isfinite(total) & (total > 0), value, np.nan)


def _simulate(spec: CaseSpec, rng: np.random.Generator) -> np.ndarray:
    n = HISTORY + N_POINTS
    n_sub = (n - 1) * _PER_STEP + _PER_WINDOW
    # scrape j happens (j - _PER_WINDOW + 1) scrapes after the first row, in minutes
    # from the first row of the judged part (the history days are negative):
    t = (np.arange(n_sub) - (_PER_WINDOW - 1)) * SCRAPE / 60.0 - HISTORY
    hours = spec.start_hour + t / 60.0
    kind = {"success_rate": "error", "error_budget_burn": "error", "latency_p99": "latency"}
    driver_kind = kind.get(spec.metric, "kpi")
    load = daily_profile(hours, spec.daily)
    level = spec.level if spec.level is not None else _DEFAULT_LEVEL[spec.metric]
    driver = level * _weather(rng, n_sub, _WEATHER[driver_kind])
    if driver_kind == "latency":
        driver = driver * (1.0 + 0.15 * (load - 1.0))  # a little slower under load
    for eff in spec.effects:
        if isinstance(eff, _DRIVER_EFFECTS):
            driver = driver * eff.factor_at(t, rng)
    up = np.ones(n_sub, dtype=bool)
    resets: list[int] = []
    for eff in spec.effects:
        if isinstance(eff, Gap):
            up &= ~((t >= eff.at) & (t < eff.at + eff.minutes))
        elif isinstance(eff, Reset):
            j = int(np.searchsorted(t, eff.at))
            up[j : j + 2] = False
            resets.append(j + 2)

    if driver_kind == "error":
        req = rng.poisson(_REQUESTS_PER_SECOND * load * SCRAPE)
        err = rng.binomial(req, np.clip(driver, 0.0, 1.0))
        c = counter_values(np.stack([req, err]), resets, rng)
        r_req, r_err = prometheus_rate(c, up, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = r_err / r_req
        values = 1.0 - ratio if spec.metric == "success_rate" else ratio / (1.0 - SLO)
    elif driver_kind == "latency":
        req = rng.poisson(_REQUESTS_PER_SECOND * load * SCRAPE)
        log_b = np.log(np.array(BUCKETS))
        cdf = ndtr((log_b[None, :] - np.log(driver)[:, None]) / LATENCY_SIGMA)
        probs = np.clip(np.diff(cdf, axis=1, prepend=0.0, append=1.0), 0.0, None)
        per_bucket = rng.multinomial(req, probs / probs.sum(axis=1, keepdims=True))
        cum = np.cumsum(per_bucket, axis=1).T  # le buckets × scrapes
        values = histogram_quantile(
            0.99, prometheus_rate(counter_values(cum, resets, rng), up, n), BUCKETS
        )
    else:
        events = rng.poisson(driver * load * SCRAPE)
        if spec.metric == "revenue":
            mu = math.log(ORDER_MEAN) - ORDER_SIGMA**2 / 2.0
            orders = rng.lognormal(mu, ORDER_SIGMA, int(events.sum()))
            owner = np.repeat(np.arange(n_sub), events)
            cents = np.rint(np.bincount(owner, weights=orders, minlength=n_sub) * 100)
            values = prometheus_rate(counter_values(cents[None, :], resets, rng), up, n)[0] / 100.0
        else:
            values = prometheus_rate(counter_values(events[None, :], resets, rng), up, n)[0]
    for eff in spec.effects:
        if isinstance(eff, Outlier):
            values[HISTORY + eff.at] *= eff.factor
    return values


def _window(spec: CaseSpec) -> tuple[int, int] | None:
    if spec.expected is None:
        return None
    spans = [e for e in spec.effects if isinstance(e, Shift | Ramp | Flap | Jitter)]
    outliers = [e for e in spec.effects if isinstance(e, Outlier)]
    start = min([math.floor(e.at) for e in spans] + [e.at for e in outliers])
    end = max(
        [math.ceil(e.at + e.minutes + RATE_WINDOW / 60.0) for e in spans]
        + [e.at + 1 for e in outliers]
    )
    return start, min(end, N_POINTS)


def generate(spec: CaseSpec) -> IncidentCase:
    """The case's series, from its own seed only."""
    rng = np.random.default_rng(spec.seed)
    values = _simulate(spec, rng)
    start = ORIGIN + pd.Timedelta(hours=spec.start_hour) - pd.Timedelta(days=HISTORY_DAYS)
    timestamps = pd.date_range(start, periods=len(values), freq=pd.Timedelta(seconds=STEP))
    return IncidentCase(
        name=spec.name,
        metric=spec.metric,
        direction=DIRECTIONS[spec.metric],
        timestamps=timestamps,
        values=values,
        window=_window(spec),
        expected=spec.expected,
        seed=spec.seed,
        story=spec.story,
        effects=spec.effects,
    )


#: The suite. Incidents start after the first 6 hours (a full live lookback) so every
#: case is judged with the history the live detector has; gaps and restarts in the
#: history are part of real life.
# fmt: off
SPECS: tuple[CaseSpec, ...] = (
    # ---------------------------------------------------------------- level shifts
    CaseSpec("level_shift/success_bad_deploy", "success_rate", "level_shift", 101, 9.0,
             (Shift(420, 45, 6.0),), story="a deploy answers 1.2 % 5xx until rolled back"),
    CaseSpec("level_shift/success_dependency_errors", "success_rate", "level_shift", 102, 13.0,
             (Gap(150, 8), Shift(400, 60, 5.0)), level=0.001,
             story="99.9 % → 99.5 %: a dependency starts failing some calls"),
    CaseSpec("level_shift/latency_slow_deploy", "latency_p99", "level_shift", 103, 10.0,
             (Shift(430, 50, 2.0),), story="a release doubles request latency"),
    CaseSpec("level_shift/latency_db_failover", "latency_p99", "level_shift", 104, 16.0,
             (Reset(250), Shift(410, 40, 1.6)), level=0.12,
             story="the database fails over to a slower replica (+60 %)"),
    CaseSpec("level_shift/latency_noisy_neighbour", "latency_p99", "level_shift", 105, 3.0,
             (Shift(450, 45, 1.5),),
             story="a noisy neighbour: latency +50 %, p99 +15 % (within the 0.25-0.5 s bucket)"),
    CaseSpec("level_shift/burn_upstream_5xx", "error_budget_burn", "level_shift", 106, 11.0,
             (Shift(440, 40, 10.0),), story="an upstream returns 5xx: burn 0.6 → 6"),
    CaseSpec("level_shift/burn_config_push", "error_budget_burn", "level_shift", 107, 20.0,
             (Gap(300, 5), Shift(390, 50, 6.0)), level=0.0004,
             story="a bad config push: burn 0.4 → 2.4"),
    # ---------------------------------------------------------- volatility spikes
    CaseSpec("volatility_spike/latency_jitter", "latency_p99", "volatility_spike", 201, 10.0,
             (Jitter(420, 40, 0.6),), story="latency jumps around minute to minute (a flaky LB)"),
    CaseSpec("volatility_spike/latency_gc_pauses", "latency_p99", "volatility_spike", 202, 14.0,
             (Flap(400, 30, 3.0, 0.3),), story="stop-the-world GC pauses in ~30 % of minutes"),
    CaseSpec("volatility_spike/success_flapping_dependency", "success_rate", "volatility_spike",
             203, 12.0, (Flap(430, 35, 12.0, 0.3),),
             story="a dependency flaps: 2.4 % errors in ~30 % of minutes"),
    CaseSpec("volatility_spike/checkouts_erratic", "checkouts", "volatility_spike", 204, 15.0,
             (Jitter(410, 40, 0.5),), level=1.5,
             story="a payment provider's retry storms make checkouts erratic"),
    CaseSpec("volatility_spike/sessions_bot_bursts", "sessions", "volatility_spike", 205, 11.0,
             (Flap(440, 40, 1.8, 0.35),), story="bursts of bot sessions in a third of minutes"),
    CaseSpec("volatility_spike/burn_flapping", "error_budget_burn", "volatility_spike", 206, 17.0,
             (Flap(420, 40, 15.0, 0.25),), story="an intermittently failing shard"),
    # -------------------------------------------------------------- trend breaks
    CaseSpec("trend_break/latency_memory_leak", "latency_p99", "trend_break", 301, 8.0,
             (Ramp(380, 120, 2.5),), story="a memory leak: latency climbs for 2 h until OOM"),
    CaseSpec("trend_break/latency_queue_backlog", "latency_p99", "trend_break", 302, 13.0,
             (Ramp(420, 90, 1.8),), story="a consumer falls behind: queueing latency grows"),
    CaseSpec("trend_break/success_progressive_rollout", "success_rate", "trend_break", 303, 9.5,
             (Ramp(400, 90, 10.0),), story="a canary with 2 % 5xx rolled out over 90 min"),
    CaseSpec("trend_break/burn_progressive_rollout", "error_budget_burn", "trend_break", 304, 15.0,
             (Gap(200, 6), Ramp(410, 100, 12.0)), story="the same, seen as error-budget burn"),
    CaseSpec("trend_break/checkouts_slow_bleed", "checkouts", "trend_break", 305, 10.0,
             (Ramp(400, 120, 0.4),), story="a cache expires key by key; checkouts bleed away"),
    CaseSpec("trend_break/sessions_dns_migration", "sessions", "trend_break", 306, 12.0,
             (Ramp(420, 100, 0.5),), story="a DNS change moves users to a broken region"),
    # ----------------------------------------------------------- percent changes
    CaseSpec("percent_change/checkouts_payment_provider", "checkouts", "percent_change", 401, 11.0,
             (Shift(420, 60, 0.55),), story="one payment provider is down: checkouts −45 %"),
    CaseSpec("percent_change/checkouts_small_shop", "checkouts", "percent_change", 402, 14.0,
             (Shift(400, 60, 0.45),), level=0.25, story="a small shop loses half its checkouts"),
    CaseSpec("percent_change/revenue_card_declines", "revenue", "percent_change", 403, 16.0,
             (Shift(430, 50, 0.6),), story="card declines: revenue −40 %"),
    CaseSpec("percent_change/sessions_traffic_loss", "sessions", "percent_change", 404, 10.0,
             (Shift(410, 60, 0.6),), story="a CDN region fails: sessions −40 %"),
    CaseSpec("percent_change/sessions_bot_surge", "sessions", "percent_change", 405, 13.0,
             (Shift(440, 45, 1.7),), story="a bot campaign: sessions +70 %"),
    CaseSpec("percent_change/checkouts_evening_drop", "checkouts", "percent_change", 406, 12.0,
             (Reset(200), Shift(450, 60, 0.6)), level=1.0,
             story="checkout button broken for one browser: −40 % on the evening ramp"),
    # ------------------------------------------------- spike (shown, never paged)
    CaseSpec("spike/latency_one_slow_evaluation", "latency_p99", "spike", 508, 15.0,
             (Outlier(450, 4.0),), story="one evaluation reads a 4× p99"),
    CaseSpec("spike/latency_gc_stall", "latency_p99", "spike", 601, 10.0,
             (Outlier(430, 3.0),), story="a stop-the-world pause triples one minute's p99"),
    CaseSpec("spike/success_single_bad_scrape", "success_rate", "spike", 602, 13.0,
             (Outlier(440, 0.97),), story="one scrape of a half-started pod: 3 % of requests fail"),
    CaseSpec("spike/sessions_crawler_minute", "sessions", "spike", 603, 11.0,
             (Outlier(420, 3.0),), story="a crawler triples sessions for one minute"),
    CaseSpec("spike/sessions_lost_minute", "sessions", "spike", 604, 16.0,
             (Outlier(445, 0.2),), story="a reload drops 80 % of one minute of sessions"),
    CaseSpec("spike/checkouts_stalled_minute", "checkouts", "spike", 605, 14.0,
             (Outlier(435, 0.05),), level=4.0,
             story="the payment gateway stalls for one evaluation: almost no checkouts"),
    # ------------------------------------------------------ look-alikes (no page)
    CaseSpec("lookalike/evening_peak_checkouts", "checkouts", None, 501, 13.0, daily=1.0,
             story="a shop's evening peak at 20:00 and the fall after it"),
    CaseSpec("lookalike/morning_ramp_sessions", "sessions", None, 502, 1.0, daily=1.0,
             story="sessions climb from the night trough through the morning"),
    CaseSpec("lookalike/night_fall_sessions", "sessions", None, 512, 15.0, daily=1.0,
             story="sessions fall from the evening peak into the night"),
    CaseSpec("lookalike/deploy_blip_latency", "latency_p99", None, 503, 11.0,
             (Shift(430, 2, 2.5),), story="cold caches for 2 minutes after a rolling deploy"),
    CaseSpec("lookalike/deploy_blip_success", "success_rate", None, 504, 14.0,
             (Shift(415, 3, 5.0),), story="a rollout drops connections: 3 min of 1 % 5xx"),
    CaseSpec("lookalike/deploy_blip_checkouts", "checkouts", None, 505, 16.0,
             (Shift(420, 2, 0.3),), story="checkout pods restart: 2 minutes of few checkouts"),
    CaseSpec("lookalike/slow_drift_latency", "latency_p99", None, 506, 9.0,
             (Drift(1.1),), story="latency creeps up 10 % in 10 hours, inside the noise"),
    CaseSpec("lookalike/slow_drift_success", "success_rate", None, 507, 12.0,
             (Drift(1.3),), story="5xx ratio creeps from 0.20 % to 0.26 % in 10 hours"),
    CaseSpec("lookalike/gap_then_recovery_success", "success_rate", None, 509, 10.0,
             (Gap(400, 20),), story="20 minutes without scrapes, then the same level"),
    CaseSpec("lookalike/counter_reset_checkouts", "checkouts", None, 510, 13.0,
             (Reset(430),), story="the checkout service restarts; its counters start from 0"),
    CaseSpec("lookalike/restart_success_rate", "success_rate", None, 511, 18.0,
             (Reset(380),), story="the app restarts; requests and errors reset together"),
)
# fmt: on


def incident_cases(specs: Sequence[CaseSpec] = SPECS) -> list[IncidentCase]:
    """Every case of the suite, generated."""
    return [generate(s) for s in specs]


# --------------------------------------------------------------------------- scoring


def query_for(case: IncidentCase) -> Query:
    """The default catalogue's query of the case's metric (direction, ``min_scale`` and
    the rest, as the live detector watches it), fed from the case instead of PromQL."""
    base = {q.name: q for q in DEFAULT_QUERIES}.get(case.metric)
    if base is None:
        return Query(name=case.metric, promql="csv", direction=case.direction)
    return base.model_copy(update={"promql": "csv", "direction": case.direction})


def run_case(case: IncidentCase, settings: Settings) -> pd.DataFrame:
    """The backtest frame of one case (one series, one call, as a CSV file is replayed)."""
    inp = SeriesInput(case.name, case.timestamps, case.values)
    return backtest_series([inp], settings, query_for(case))[0]


def _episodes(anomalous: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) row ranges of the anomalous runs."""
    a = np.concatenate([[0], anomalous.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(a))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _reasons(cells: pd.Series) -> set[str]:
    out: set[str] = set()
    for cell in cells.fillna("").astype(str):
        out.update(r for r in cell.split(";") if r)
    return out


def score_case(case: IncidentCase, frame: pd.DataFrame, warmup: int = 0) -> dict[str, object]:
    """One row of ``case_results``: the judged part of ``frame`` (after the history days),
    alarms in its first ``warmup`` rows not counted."""
    frame = frame.iloc[case.history :].reset_index(drop=True)
    anomalous = frame["anomalous"].to_numpy() > 0
    reasons = frame["reasons"]
    detected, right, seen, delay = False, False, set(), math.nan
    if case.window is not None:
        lo, hi = case.window[0], min(case.window[1] + TOLERANCE, len(frame))
        rows = np.flatnonzero(anomalous[lo:hi]) + lo
        if len(rows):
            detected = True
            seen = _reasons(reasons.iloc[rows])
            right = case.expected in seen
            delay = (rows[0] - lo) * STEP / 60.0
    else:
        lo = hi = -1
    false_onsets: list[int] = []
    false_reasons: set[str] = set()
    for start, end in _episodes(anomalous):
        if end <= warmup or lo <= start < hi:  # begun inside the window: the incident itself
            continue
        false_onsets.append(max(start, warmup))
        false_reasons |= _reasons(reasons.iloc[start:end])
    unexplained = int((anomalous & (reasons.fillna("").astype(str) == "")).sum())
    return {
        "name": case.name,
        "metric": case.metric,
        "direction": case.direction,
        "expected": case.expected or "",
        "window": "" if case.window is None else f"{case.window[0]}-{case.window[1]}",
        "detected": detected,
        "reason_ok": right,
        "reasons_seen": ";".join(sorted(seen)),
        "first_delay_min": delay,
        "false_alarms": len(false_onsets),
        "false_reasons": ";".join(sorted(false_reasons)),
        "false_onsets": " ".join(map(str, false_onsets)),
        "unexplained": unexplained,
    }


CASE_COLUMNS = [
    "name",
    "metric",
    "direction",
    "expected",
    "window",
    "detected",
    "reason_ok",
    "reasons_seen",
    "first_delay_min",
    "false_alarms",
    "false_reasons",
    "false_onsets",
    "unexplained",
]


def case_results(
    cases: Sequence[IncidentCase], settings: Settings | None = None, *, warmup: int | None = None
) -> pd.DataFrame:
    """One row per case: what the detector made of it (see the module docstring).

    Each case is replayed whole, its history days included; alarms count in the judged
    part, after its first ``warmup`` rows (default 0: the history days are the warm-up).
    """
    settings = settings or load_settings(metrics=None, config=None)
    rows = []
    for case in cases:
        rows.append(score_case(case, run_case(case, settings), warmup or 0))
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


REASON_COLUMNS = [
    "reason",
    "positives",
    "detected",
    "tp",
    "recall",
    "fp",
    "precision",
    "negatives",
    "negatives_fired",
]


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def summarise(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per reason and ``overall``: recall of the right reason and precision against false alarms.

    - ``tp``: cases of that reason detected with that reason; ``detected``: with any reason;
    - ``fp``: cases (incidents or look-alikes) with a false alarm carrying that reason;
    - ``negatives_fired``: look-alikes among them;
    - ``overall``: ``tp`` = right reason, ``recall`` = detected / positives (any reason),
      ``fp`` = cases with any false alarm, ``precision`` = detected / (detected + fp).
    """
    neg = per_case[per_case["expected"] == ""]
    rows = []
    for reason in REASONS:
        pos = per_case[per_case["expected"] == reason]
        carries = per_case["false_reasons"].str.split(";").apply(lambda rs, r=reason: r in rs)
        tp = int(pos["reason_ok"].sum())
        fp = int(carries.sum())
        rows.append(
            {
                "reason": reason,
                "positives": len(pos),
                "detected": int(pos["detected"].sum()),
                "tp": tp,
                "recall": _ratio(tp, len(pos)),
                "fp": fp,
                "precision": _ratio(tp, tp + fp),
                "negatives": len(neg),
                "negatives_fired": int(carries[neg.index].sum()),
            }
        )
    pos = per_case[per_case["expected"] != ""]
    detected = int(pos["detected"].sum())
    fp = int((per_case["false_alarms"] > 0).sum())
    rows.append(
        {
            "reason": "overall",
            "positives": len(pos),
            "detected": detected,
            "tp": int(pos["reason_ok"].sum()),
            "recall": _ratio(detected, len(pos)),
            "fp": fp,
            "precision": _ratio(detected, detected + fp),
            "negatives": len(neg),
            "negatives_fired": int((neg["false_alarms"] > 0).sum()),
        }
    )
    return pd.DataFrame(rows, columns=REASON_COLUMNS)


def evaluate(
    cases: Sequence[IncidentCase], settings: Settings | None = None, *, warmup: int | None = None
) -> pd.DataFrame:
    """Replay every case as ``aiops backtest`` does and score it per reason (``summarise``)."""
    return summarise(case_results(cases, settings, warmup=warmup))
