"""Benchmark: peak RSS of one detection cycle when Prometheus answers far more series
than ``AIOPS_MAX_SERIES_PER_QUERY`` keeps.

    python bench/big_answer.py                          # 50,000 series x 361 points, cap 1,000
    python bench/big_answer.py --series 5000 --cap 1000
    python bench/big_answer.py --json var/bench/big_answer.json

The stand-in of Prometheus' HTTP API (``bench/standin.py``) runs in its own process on
loopback and writes its answer while generating it (a 6 h lookback at 1-minute steps:
361 points per series, and the seasonal slices one, two and three days back), so only
the detector's memory is measured. The detector runs in a fresh process (its peak RSS
is its own): one cycle of the service's ``Detector`` with one catalogue query
(``bench_value`` by namespace and app, daily seasonality), then the answer's size, the
cycle's wall time, its series scored and dropped, and its peak RSS are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import parser, peak_rss_mb, run_fresh, write_json

HERE = Path(__file__).resolve()


def measure(url: str, cap: int) -> dict:
    """One cycle against ``url`` in this process (call it in a fresh one)."""
    from aiops.core.settings import load_settings
    from bench.synthetic import EPOCH, QUERY
    from detector.cycle import Detector

    settings = load_settings(prom_url=url, metrics=None, config=None, max_series_per_query=cap)
    det = Detector(settings, queries=[QUERY])
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    report = det.run_cycle(EPOCH)
    seconds = time.perf_counter() - t0
    dropped = det.registry.get_sample_value(
        "aiops_detector_series_dropped_total", {"query": QUERY.name}
    )
    return {
        "outcome": report.outcome,
        "errors": {k: f"{e.kind}: {e.message}" for k, e in report.errors.items()},
        "kept": len(report.results.get(QUERY.name, [])),
        "dropped": dropped,
        "cycle_s": round(seconds, 2),
        "rss_before_mb": round(rss_before),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def run(series: int, cap: int) -> dict:
    from demo.prometheus import free_port, stop_process, wait_http_ok

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE.with_name("standin.py")),
            "--port",
            str(port),
            "--series",
            str(series),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok("stand-in Prometheus", f"{url}/-/ready", server, lambda: "", 30)
        res = run_fresh(str(HERE), "--measure", url, "--cap", str(cap), what="the cycle")
    finally:
        stop_process(server)
    return {"series": series, "points": 361, "cap": cap, **res}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--series", type=int, default=50_000)
    ap.add_argument("--cap", type=int, default=1000)
    ap.add_argument("--measure", metavar="URL", help=argparse_hidden())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.cap)))
        return
    res = run(args.series, args.cap)
    print(
        f"{res['series']:,} series x {res['points']} points, cap {res['cap']:,}: cycle "
        f"{res['outcome']} in {res['cycle_s']:.1f} s, {res['kept']:,} kept, "
        f"{res['dropped']:,.0f} dropped, peak RSS {res['peak_rss_mb']:,} MB"
    )
    print(json.dumps(res))
    write_json(args.json, res)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
