"""Benchmark: wall time of one detection cycle, and peak memory.

    python bench/cycle.py                 # synthetic series: 100 and 1,000 (add --sizes)
    python bench/cycle.py --prometheus    # also the demo catalogue against a real Prometheus

Synthetic series skip the fetch (they are handed to the same detect_batch the service
uses: features, IsolationForest fit/score, explainers, export). The Prometheus run is a
full cycle of the service, range queries included, on 4 hours of backfilled demo history.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.catalogue import Query
from detector.cycle import Detector
from detector.exporter import AnomalyCollector
from detector.pipeline import detect_batch
from detector.scoring import BaselineModelProvider
from detector.settings import load_settings
from detector.source import SeriesBatch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, points: int = 361, seed: int = 0) -> SeriesBatch:
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.05, 500, n)[:, None]
    x = level * (1 + rng.normal(0, 0.02, (n, points)))
    x[: n // 50, -20:] *= 1.5  # 2% of the series have an incident
    labels = [{"namespace": f"ns{i % 10}", "app": f"app{i}"} for i in range(n)]
    return SeriesBatch("bench", time.time() - 60 * (points - 1), 60.0, labels, x)


def bench_synthetic(n: int, repeat: int) -> dict[str, float]:
    settings = load_settings(metrics=None, config=None)
    query = Query(name="bench", promql="x", direction="both", labels=("namespace", "app"))
    batch = synthetic(n)
    provider = BaselineModelProvider(refit_seconds=0)  # refit every cycle: the worst case
    registry = CollectorRegistry()
    collector = AnomalyCollector(registry)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        results = detect_batch(batch, query, settings, provider, now=time.time())
        collector.update("bench", results)
        generate_latest(registry)
        times.append(time.perf_counter() - t0)
    return {
        "series": n,
        "cycle_s_median": float(np.median(times)),
        "anomalous": sum(r.anomalous for r in results),
    }


def bench_prometheus(repeat: int) -> dict[str, float]:
    from demo.prometheus import PrometheusProcess, backfill, scrape_config
    from demo.server import serve
    from demo.workload import Workload

    now = time.time()
    workload = Workload(seed=1, start=now - 4 * 3600)
    workload.inject("checkout", "latency_shift", start=now - 1200, duration=3600)
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history.om"
        workload.write_openmetrics(history, end=now)
        backfill(history, Path(tmp) / "prom" / "data")
        server, _ = serve(workload)
        host, port = server.server_address[:2]
        prom = PrometheusProcess(Path(tmp) / "prom", scrape_config({"demo": [f"{host}:{port}"]}))
        prom.start()
        try:
            det = Detector(load_settings(prom_url=prom.url, metrics=None, config=None))
            times, series = [], 0
            for _ in range(repeat):
                report = det.run_cycle()
                times.append(report.duration)
                series = len(report.all_results())
        finally:
            prom.stop()
            server.stop()
    return {"series": series, "cycle_s_median": float(np.median(times)), "queries": 6}


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prometheus", action="store_true")
    args = ap.parse_args()
    print(f"{'what':<40} {'series':>7} {'cycle s (median)':>17} {'peak RSS MB':>12}")
    if args.prometheus:
        r = bench_prometheus(args.repeat)
        print(
            f"{'demo catalogue, real Prometheus':<40} {r['series']:>7} "
            f"{r['cycle_s_median']:>17.3f} {peak_rss_mb():>12.0f}"
        )
    for n in (int(s) for s in args.sizes.split(",")):
        r = bench_synthetic(n, args.repeat)
        print(
            f"{'synthetic, 6h at 1m, no fetch':<40} {n:>7} "
            f"{r['cycle_s_median']:>17.3f} {peak_rss_mb():>12.0f}"
        )


if __name__ == "__main__":
    main()
