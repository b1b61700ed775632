"""A stand-in for Prometheus that serves many synthetic series, for the benchmarks.

Every series is defined at every instant (a level, a daily cycle, deterministic noise),
so the live window and the seasonal slices of earlier days (``detector.season``) are
the same function of time, whatever is asked and in whichever order. 2 % of the series
step up by half their level 20 minutes before ``incident_at``, 1 % get noisy there.
"""

from __future__ import annotations

import numpy as np

from detector.catalogue import Query
from detector.source import SeriesBatch, align_end

DAY = 86400.0
#: A Monday 12:00 UTC: the benchmarks' clock (results do not depend on the wall clock).
EPOCH = 1_767_614_400.0
#: the benchmarks' catalogue entry: every synthetic series (``bench_value`` in Prometheus)
QUERY = Query(name="bench", promql="bench_value", direction="both", labels=("namespace", "app"))


def labels_of(n: int) -> list[dict[str, str]]:
    return [{"namespace": f"ns{i % 20:02d}", "app": f"app{i:05d}"} for i in range(n)]


class SyntheticSource:
    """``fetch`` like ``detector.source.PrometheusSource``, from a formula."""

    def __init__(self, n: int, *, seed: int = 0, incident_at: float = EPOCH) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.level = rng.uniform(0.05, 500.0, n)[:, None]
        self.amp = (rng.uniform(0.0, 0.6, n) * (rng.random(n) < 0.7))[:, None]
        self.phase = rng.uniform(0.0, 2 * np.pi, n)[:, None]
        self.noise = rng.uniform(0.01, 0.04, n)[:, None]
        self.key = rng.uniform(1.0, 2.0, n)[:, None]
        self.labels = labels_of(n)
        self.incident_at = incident_at
        self.requests = 0

    def values(self, times: np.ndarray, rows: slice | None = None) -> np.ndarray:
        sl = rows or slice(None)
        t = np.asarray(times, dtype=np.float64)[None, :]
        minute = np.floor(t / 60.0)
        # deterministic noise per (series, minute): a hash folded into ~N(0, 1)
        u = [
            np.modf(np.sin(self.key[sl] * (k + 1) * 12.9898 + minute * 0.078233) * 43758.5453)[0]
            for k in range(3)
        ]
        z = (np.abs(u[0]) + np.abs(u[1]) + np.abs(u[2]) - 1.5) * 2.0
        daily = 1.0 + self.amp[sl] * np.sin(2 * np.pi * t / DAY + self.phase[sl])
        x = self.level[sl] * daily * (1.0 + self.noise[sl] * z)
        idx = np.arange(self.n)[sl][:, None]
        onset = self.incident_at - 1200.0
        shift = (idx % 50 == 0) & (t >= onset) & (t < onset + 3600.0)
        noisy = (idx % 100 == 1) & (t >= onset) & (t < onset + 3600.0)
        x = np.where(shift, x * 1.5, x)
        return np.where(noisy, x * (1.0 + 0.3 * z), x)

    def fetch(self, query: Query, *, end: float, lookback: float, step: float) -> SeriesBatch:
        self.requests += 1
        end = align_end(end, step)
        n_points = round(lookback / step) + 1
        start = end - step * (n_points - 1)
        times = start + step * np.arange(n_points)
        return SeriesBatch(query.name, start, step, list(self.labels), self.values(times))

    def check(self, query: Query) -> None:
        pass
