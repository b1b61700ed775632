"""Simulated web apps with SLO and business metrics, fault injection and OpenMetrics backfill.

The model advances in 1-second ticks; tick ``s`` covers the wall-clock interval ``[s-1, s)``.
Randomness is drawn per fixed 600-second block from a generator seeded with
``(seed, block, app)``, so the simulated history depends only on the seed, the fault set and
absolute time, never on how often the state was advanced (scraped) or written.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from scipy.special import ndtr

APPS: tuple[str, ...] = ("frontend", "checkout", "payments")
CODES: tuple[str, ...] = ("200", "404", "500", "503")
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAULT_KINDS: tuple[str, ...] = ("error_burst", "latency_shift", "latency_jitter", "traffic_drop")
DEFAULT_MAGNITUDE: dict[str, float] = {
    "error_burst": 0.08,  # share of requests answered with 5xx
    "latency_shift": 3.0,  # latency multiplier
    "latency_jitter": 1.0,  # sigma of the per-second lognormal factor on the median
    "traffic_drop": 0.4,  # remaining fraction of traffic
}
MAGNITUDE_RANGE: dict[str, tuple[float, float]] = {
    "error_burst": (0.0, 0.99),
    "latency_shift": (0.01, 100.0),
    "latency_jitter": (0.0, 5.0),
    "traffic_drop": (0.0, 1.0),
}
#: who calls whom (the demo's dependency map): a fault of a callee shows in its callers
CALLS: dict[str, tuple[str, ...]] = {"frontend": ("checkout",), "checkout": ("payments",)}
#: the share of a callee's extra 5xx its caller answers with 5xx (a failed payment fails
#: most checkouts), and the share of a callee's extra latency its caller adds
PASSED_ERRORS, PASSED_LATENCY = 0.8, 0.5
BASE_RATE = {"frontend": 48.0, "checkout": 30.0, "payments": 24.0}  # mean requests/s
MEDIAN_LATENCY = {"frontend": 0.040, "checkout": 0.090, "payments": 0.120}  # seconds
LATENCY_SIGMA = 0.54  # lognormal sigma: p99 ≈ 3.5 × median
P404, P5XX, SHARE_500 = 0.01, 0.001, 0.7
SESSION_RATE, CONVERSION = 25.0, 0.03  # sessions/s at frontend, share of sessions that buy
ORDER_MEAN, ORDER_SIGMA = 60.0, 0.6  # EUR
SEASON_AMPLITUDE, DAY, PEAK_HOUR_UTC = 0.25, 86400, 14.0
BLOCK = 600  # seconds of randomness drawn at once

_LE = (*(floatToGoString(b) for b in BUCKETS), "+Inf")
_LOG_BOUNDS = np.log(np.array(BUCKETS))
_SERIES = len(APPS)


@dataclass
class Fault:
    """A misbehaviour of one app during ``[start, end)`` (epoch seconds)."""

    id: int
    app: str
    kind: str
    start: float
    end: float
    magnitude: float

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "app": self.app,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "duration": self.end - self.start,
            "magnitude": self.magnitude,
        }
        if now is not None:
            data["active"] = self.start <= now < self.end
        return data


@dataclass
class _State:
    codes: np.ndarray  # (apps, codes) int64
    buckets: np.ndarray  # (apps, buckets+1) int64, non-cumulative, last one is (10, +Inf)
    hsum: np.ndarray  # (apps,) int64 microseconds (integers keep sums exact in any order)
    biz: np.ndarray  # (sessions, checkouts, revenue in cents) int64

    @classmethod
    def zero(cls) -> _State:
        return cls(
            np.zeros((_SERIES, len(CODES)), np.int64),
            np.zeros((_SERIES, len(_LE)), np.int64),
            np.zeros(_SERIES, np.int64),
            np.zeros(3, np.int64),
        )

    def copy(self) -> _State:
        return _State(self.codes.copy(), self.buckets.copy(), self.hsum.copy(), self.biz.copy())


class Workload:
    """Cumulative state of the simulated apps; thread safe."""

    def __init__(
        self,
        seed: int = 0,
        namespace: str = "demo",
        start: float | None = None,
        calls: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``calls``: who calls whom (default ``CALLS``; ``{}``: independent apps)."""
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        start = time.time() if start is None else start
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"start must be a finite epoch time >= 0, got {start}")
        self.seed = int(seed)
        self.namespace = namespace
        self.calls = CALLS if calls is None else dict(calls)
        self._t = math.floor(start)
        self._state = _State.zero()
        self._faults: list[Fault] = []
        self._next_id = 1
        self._version = 0
        self._cache: tuple[int, int, _State] | None = None
        self._lock = threading.Lock()

    @property
    def state_time(self) -> int:
        """Epoch second up to which the state has been simulated."""
        return self._t

    # ---------------------------------------------------------------- faults
    def inject(
        self,
        app: str,
        kind: str,
        *,
        start: float | None = None,
        duration: float = 600.0,
        magnitude: float | None = None,
    ) -> Fault:
        """Make ``app`` misbehave from ``start`` (default: state time) for ``duration`` s."""
        if app not in APPS:
            raise ValueError(f"unknown app {app!r}; expected one of {', '.join(APPS)}")
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
            )
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration}")
        mag = DEFAULT_MAGNITUDE[kind] if magnitude is None else float(magnitude)
        low, high = MAGNITUDE_RANGE[kind]
        low_ok = mag >= low if kind == "traffic_drop" else mag > low
        if not (math.isfinite(mag) and low_ok and mag <= high):
            bracket = "[" if kind == "traffic_drop" else "("
            raise ValueError(
                f"magnitude for {kind} must be in {bracket}{low}, {high}], got {magnitude}"
            )
        with self._lock:
            begin = float(self._t if start is None else start)
            if not math.isfinite(begin):
                raise ValueError(f"start must be a finite epoch time, got {start}")
            fault = Fault(self._next_id, app, kind, begin, begin + duration, mag)
            self._next_id += 1
            self._faults.append(fault)
            self._version += 1
            return fault

    def clear(self, app: str | None = None) -> int:
        """End ongoing faults (of ``app`` or all) now and drop scheduled ones; returns count."""
        if app is not None and app not in APPS:
            raise ValueError(f"unknown app {app!r}; expected one of {', '.join(APPS)}")
        with self._lock:
            kept: list[Fault] = []
            cleared = 0
            for f in self._faults:
                if (app is None or f.app == app) and f.end > self._t:
                    cleared += 1
                    if f.start < self._t:  # keep the past part: it may still shape this block
                        f.end = float(self._t)
                        kept.append(f)
                else:
                    kept.append(f)
            self._faults = kept
            if cleared:
                self._version += 1
            return cleared

    def faults(self) -> list[dict[str, Any]]:
        """Faults not yet over at the state time (ongoing or scheduled), oldest first."""
        with self._lock:
            return [f.to_dict(self._t) for f in self._faults if f.end > self._t]

    # ------------------------------------------------------------ simulation
    def advance_to(self, t: float) -> None:
        """Simulate every whole second from the state time up to ``t`` (no-op if in the past)."""
        with self._lock:
            self._advance(t)

    def _advance(self, t: float) -> None:
        target = math.floor(t)
        while self._t < target:
            k = self._t // BLOCK
            block = self._block(k)
            i, j = self._t - k * BLOCK, min(target, (k + 1) * BLOCK) - k * BLOCK
            st = self._state
            st.codes += block.codes[i:j].sum(axis=0)
            st.buckets += block.buckets[i:j].sum(axis=0)
            st.hsum += block.hsum[i:j].sum(axis=0)
            st.biz += block.biz[i:j].sum(axis=0)
            self._t = k * BLOCK + j
        horizon = (self._t // BLOCK) * BLOCK  # faults ending before it cannot matter any more
        self._faults = [f for f in self._faults if f.end > horizon]

    def _factors(self, app: str, u: np.ndarray) -> tuple[np.ndarray, ...]:
        traffic, share = np.ones(u.size), np.full(u.size, P5XX)
        lat, jitter = np.ones(u.size), np.zeros(u.size)
        for f in self._faults:
            if f.app != app or f.end <= u[0] or f.start > u[-1]:
                continue
            m = (u >= f.start) & (u < f.end)
            if f.kind == "traffic_drop":
                traffic[m] *= f.magnitude
            elif f.kind == "error_burst":
                share[m] = np.maximum(share[m], f.magnitude)
            elif f.kind == "latency_shift":
                lat[m] *= f.magnitude
            else:
                jitter[m] = np.hypot(jitter[m], f.magnitude)
        for callee in self.calls.get(app, ()):  # what the services it calls pass on
            _, c_share, c_lat, c_jitter = self._factors(callee, u)
            share = share + (1.0 - share) * PASSED_ERRORS * np.maximum(c_share - P5XX, 0.0)
            lat = lat * (1.0 + PASSED_LATENCY * (c_lat - 1.0))
            jitter = np.hypot(jitter, PASSED_LATENCY * c_jitter)
        return traffic, share, lat, jitter

    def _block(self, k: int) -> _State:
        """Per-tick increments of block ``k`` (ticks k*BLOCK+1 .. (k+1)*BLOCK), cached."""
        if self._cache is not None and self._cache[:2] == (k, self._version):
            return self._cache[2]
        u = np.arange(k * BLOCK, (k + 1) * BLOCK, dtype=np.float64)  # tick start times
        phase = (u + 0.5) % DAY / DAY - (PEAK_HOUR_UTC - 6.0) / 24.0
        season = 1.0 + SEASON_AMPLITUDE * np.sin(2.0 * np.pi * phase)
        codes = np.zeros((BLOCK, _SERIES, len(CODES)), np.int64)
        buckets = np.zeros((BLOCK, _SERIES, len(_LE)), np.int64)
        hsum = np.zeros((BLOCK, _SERIES), np.int64)
        biz = np.zeros((BLOCK, 3), np.int64)
        for a, app in enumerate(APPS):
            # one stream per quantity: a tick's draws then depend only on its own and earlier
            # ticks' parameters, so a fault never changes anything before its start
            seq = np.random.SeedSequence([self.seed, k, a])
            r_req, r_code, r_z, r_bucket, r_noise, r_biz, r_order = (
                np.random.default_rng(child) for child in seq.spawn(7)
            )
            traffic, share, lat, jitter = self._factors(app, u)
            req = r_req.poisson(BASE_RATE[app] * season * traffic)
            pvals = np.stack(
                [
                    1.0 - P404 - share,
                    np.full(BLOCK, P404),
                    share * SHARE_500,
                    share * (1.0 - SHARE_500),
                ],
                axis=1,
            )
            codes[:, a] = r_code.multinomial(req, pvals)
            z = r_z.standard_normal(BLOCK)
            median = MEDIAN_LATENCY[app] * lat * np.exp(jitter * z - jitter**2 / 2.0)
            cdf = ndtr((_LOG_BOUNDS[None, :] - np.log(median)[:, None]) / LATENCY_SIGMA)
            probs = np.clip(np.diff(cdf, axis=1, prepend=0.0, append=1.0), 0.0, None)
            buckets[:, a] = r_bucket.multinomial(req, probs / probs.sum(axis=1, keepdims=True))
            mean = median * math.exp(LATENCY_SIGMA**2 / 2.0)
            cv = math.sqrt(math.expm1(LATENCY_SIGMA**2))
            noise = 1.0 + cv * r_noise.standard_normal(BLOCK) / np.sqrt(np.maximum(req, 1))
            hsum[:, a] = np.rint(np.maximum(req * mean * noise, 0.0) * 1e6)
            if app == "frontend":
                biz[:, 0] = r_biz.poisson(SESSION_RATE * season * traffic)
            elif app == "checkout":
                # a checkout answered with 5xx is a sale lost
                lost = np.maximum(share - P5XX, 0.0)
                biz[:, 1] = r_biz.binomial(biz[:, 0], CONVERSION * traffic * (1.0 - lost))
                mu = math.log(ORDER_MEAN) - ORDER_SIGMA**2 / 2.0
                cents = np.rint(r_order.lognormal(mu, ORDER_SIGMA, int(biz[:, 1].sum())) * 100)
                owner = np.repeat(np.arange(BLOCK), biz[:, 1])
                biz[:, 2] = np.bincount(owner, weights=cents, minlength=BLOCK)
        block = _State(codes, buckets, hsum, biz)
        self._cache = (k, self._version, block)
        return block

    # -------------------------------------------------------------- exposure
    def _active(self) -> frozenset[tuple[str, str]]:
        return frozenset((f.app, f.kind) for f in self._faults if f.start <= self._t < f.end)

    def _metrics(self, st: _State, active: frozenset[tuple[str, str]]) -> list[Metric]:
        ns = self.namespace
        req = Metric("http_requests", "HTTP requests served, by status code.", "counter")
        dur = Metric("http_request_duration_seconds", "HTTP request latency.", "histogram")
        for a, app in enumerate(APPS):
            for c, code in enumerate(CODES):
                labels = {"namespace": ns, "app": app, "code": code}
                req.add_sample("http_requests_total", labels, int(st.codes[a, c]))
            cumulative = np.cumsum(st.buckets[a])
            for le, value in zip(_LE, cumulative, strict=True):
                labels = {"namespace": ns, "app": app, "le": le}
                dur.add_sample("http_request_duration_seconds_bucket", labels, int(value))
            labels = {"namespace": ns, "app": app}
            dur.add_sample("http_request_duration_seconds_count", labels, int(cumulative[-1]))
            dur.add_sample("http_request_duration_seconds_sum", labels, int(st.hsum[a]) / 1e6)
        out = [req, dur]
        for name, app, doc, value in (
            ("shop_sessions_started", "frontend", "Shop sessions started.", int(st.biz[0])),
            ("shop_checkouts_completed", "checkout", "Checkouts completed.", int(st.biz[1])),
            (
                "shop_revenue_euros",
                "checkout",
                "Revenue of completed checkouts in EUR.",
                int(st.biz[2]) / 100,
            ),
        ):
            fam = Metric(name, doc, "counter")
            fam.add_sample(name + "_total", {"namespace": ns, "app": app}, value)
            out.append(fam)
        truth = Metric(
            "demo_fault_active", "1 while an injected fault is active (ground truth).", "gauge"
        )
        for app in APPS:
            for kind in FAULT_KINDS:
                labels = {"namespace": ns, "app": app, "kind": kind}
                truth.add_sample("demo_fault_active", labels, int((app, kind) in active))
        out.append(truth)
        return out

    def metrics(self) -> list[Metric]:
        """Metric families of the current cumulative state (does not advance)."""
        with self._lock:
            st, active = self._state.copy(), self._active()
        return self._metrics(st, active)

    def samples(self) -> dict[str, float]:
        """Current values keyed by series, e.g. ``http_requests_total{namespace="demo",...}``."""
        return {_series_key(s.name, s.labels): s.value for m in self.metrics() for s in m.samples}

    def collector(self, clock: Callable[[], float] | None = time.time) -> WorkloadCollector:
        """A prometheus_client collector; on each collect it advances to ``clock()`` if given."""
        return WorkloadCollector(self, clock)

    def register(
        self,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] | None = time.time,
    ) -> CollectorRegistry:
        """Register a collector on ``registry`` (a new private one if None) and return it."""
        registry = CollectorRegistry() if registry is None else registry
        registry.register(self.collector(clock))
        return registry

    # -------------------------------------------------------------- backfill
    def write_openmetrics(
        self,
        path: str | Path,
        end: float,
        interval: float = 15.0,
        labels: dict[str, str] | None = None,
    ) -> Path:
        """Simulate up to ``end`` and write every series every ``interval`` s as OpenMetrics.

        The first sample is the state at the current state time, the last one the state at
        ``floor(end)``, which is also the live state afterwards. ``labels`` are added to
        every series: give the ``job`` and ``instance`` Prometheus will attach when it
        scrapes the live workload, and the live samples continue the backfilled series
        (otherwise, for one rate window after the switch, a sum counts both).
        """
        if not (math.isfinite(interval) and interval >= 1.0):
            raise ValueError(f"interval must be >= 1 second, got {interval}")
        with self._lock:
            t0, t1 = self._t, math.floor(end)
            if t1 < t0:
                raise ValueError(f"end {end} is before the state time {t0}")
            grid = np.floor(t0 + np.arange(int((t1 - t0) // interval) + 1) * interval)
            times = [int(t) for t in np.unique(np.append(grid, t1))]
            snapshots = []
            for t in times:
                self._advance(t)
                snapshots.append((self._state.copy(), self._active()))
        per_time = [self._metrics(st, active) for st, active in snapshots]
        out = Path(path)
        with out.open("w", encoding="utf-8") as fh:
            fh.writelines(_openmetrics_lines(per_time, times, labels or {}))
        return out


class WorkloadCollector(Collector):
    """Custom collector exposing a :class:`Workload`'s cumulative state."""

    def __init__(self, workload: Workload, clock: Callable[[], float] | None = time.time) -> None:
        self.workload = workload
        self.clock = clock

    def describe(self) -> list[Metric]:
        return [Metric(m.name, m.documentation, m.type) for m in self.workload.metrics()]

    def collect(self) -> Iterable[Metric]:
        if self.clock is not None:
            self.workload.advance_to(self.clock())
        return self.workload.metrics()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _series_key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def _format_value(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _openmetrics_lines(
    per_time: list[list[Metric]], times: list[int], extra: dict[str, str]
) -> Iterator[str]:
    """Family by family; within a family label set by label set; within it time-ordered points
    (a histogram point = all its buckets, _count and _sum at one timestamp)."""
    for f, family in enumerate(per_time[0]):
        yield f"# HELP {family.name} {_escape(family.documentation)}\n"
        yield f"# TYPE {family.name} {family.type}\n"
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(family.samples):
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for metrics, t in zip(per_time, times, strict=True):
                samples = metrics[f].samples
                for i in indices:
                    s = samples[i]
                    key = _series_key(s.name, {**extra, **s.labels})
                    yield f"{key} {_format_value(s.value)} {t}\n"
    yield "# EOF\n"
