"""Benchmark: the retrain job for many series × 14 days at 1-minute resolution.

    python bench/train.py                        # 100 and 1,000 series, local, then Dask
    python bench/train.py --sizes 100 --no-dask  # quicker

Synthetic history (a daily cycle, noise, a few incidents) is handed to the same
``Trainer`` that ``aiops train`` runs, minus the Prometheus fetch: features with
THE feature function, feature rows into SQLite, one IsolationForest per series
fitted through joblib (2 local processes) or on a 2-worker Dask ``LocalCluster``,
evaluation on the tail and promotion into the registry. Peak memory is sampled
over the whole process tree (workers included) every 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.core.db import make_engine
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.source import SeriesBatch
from sql.migrate import migrate
from training.train import Trainer

DAY = 86400.0
STEP = 60.0


class PeakRSS:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def history(n: int, days: float, now: float, seed: int = 0) -> SeriesBatch:
    points = int(days * DAY / STEP) + 1
    t = now - STEP * (points - 1) + STEP * np.arange(points)
    rng = np.random.default_rng(seed)
    level = rng.uniform(1, 500, (n, 1))
    daily = 1 + 0.3 * np.sin(2 * np.pi * t / DAY + rng.uniform(0, 6.3, (n, 1)))
    values = level * daily * (1 + rng.normal(0, 0.03, (n, points)))
    for i in range(0, n, 25):  # an incident in every 25th series, somewhere in the first days
        at = rng.integers(points // 10, points // 2)
        values[i, at : at + 90] *= 1.6
    labels = [{"namespace": f"ns{i % 10}", "app": f"app{i}"} for i in range(n)]
    return SeriesBatch("bench", float(t[0]), STEP, labels, values.astype(np.float64))


def run(n: int, days: float, *, dask_address: str | None, store: bool) -> dict[str, float]:
    now = 1_780_000_000.0
    batch = history(n, days, now)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            metrics=None,
            config=None,
            database_url=f"sqlite:///{tmp}/bench.db",
            train_history=f"{days:g}d",
            train_jobs=int(os.environ.get("BENCH_JOBS", "2")),
            dask_address=dask_address,
        )
        engine = make_engine(settings.database_url)
        migrate(engine)
        query = Query(
            name="bench",
            promql="x",
            direction="both",
            labels=("namespace", "app"),
            seasonality="daily",
        )
        trainer = Trainer(settings, engine, fetch=lambda q, s, e, st: batch, queries=[query])
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            report = trainer.run(now=now, progress=False, store_features=store)
            seconds = time.perf_counter() - t0
        engine.dispose()
    return {
        "series": n,
        "seconds": seconds,
        "per_series_ms": 1000 * seconds / n,
        "peak_rss_mb": rss.peak / 2**20,
        "promoted": report.count("promoted"),
        "rejected": report.count("rejected"),
        "feature_rows": report.feature_rows,
        **{f"{k}_s": v for k, v in report.phases.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--no-dask", action="store_true", help="local joblib only")
    ap.add_argument("--no-store", action="store_true", help="do not write feature rows")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for n in args.sizes:
        rows.append(
            (
                "local (joblib, 2 processes)",
                run(n, args.days, dask_address=None, store=not args.no_store),
            )
        )
        print(_line(*rows[-1]), flush=True)
    if not args.no_dask:
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            for n in args.sizes:
                rows.append(
                    (
                        "Dask LocalCluster, 2 workers",
                        run(
                            n,
                            args.days,
                            dask_address=cluster.scheduler_address,
                            store=not args.no_store,
                        ),
                    )
                )
                print(_line(*rows[-1]), flush=True)
    print()
    print(
        f"Training benchmark, {args.days:g} days at 1-minute steps per series,"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| where | series | wall time | per series | peak RSS (tree) | promoted | feature rows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for where, r in rows:
        print(
            f"| {where} | {r['series']:,} | {r['seconds']:.1f} s | {r['per_series_ms']:.0f} ms"
            f" | {r['peak_rss_mb']:,.0f} MB | {r['promoted']:,} | {r['feature_rows']:,} |"
        )


def _line(where: str, r: dict[str, float]) -> str:
    phases = " ".join(f"{k[:-2]} {v:.1f}s" for k, v in r.items() if k.endswith("_s"))
    return (
        f"{where}: {r['series']} series in {r['seconds']:.1f}s"
        f" ({r['per_series_ms']:.0f} ms/series), peak RSS {r['peak_rss_mb']:.0f} MB,"
        f" promoted {r['promoted']}, feature rows {r['feature_rows']} ({phases})"
    )


if __name__ == "__main__":
    main()
