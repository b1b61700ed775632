"""Benchmark: backtest replay speed of one query's 1-minute series with daily seasonality.

    python bench/backtest_speed.py                    # 1, 10 and 100 series, 7 days each
    python bench/backtest_speed.py --series 100 --days 14 --json var/speed.json

A query's series are replayed together, as ``aiops backtest --query NAME`` replays
them from Prometheus (``training.runner.backtest_series``: the feature function over
every series and row at once, one forest per query refitted every 500 rows on the rows
before it, the verdict rule vectorised). The series are shop-like 1-minute KPIs: a daily
profile of ±40 %, 3 % noise, each at its own level and phase, on a query with the
default (daily) seasonality. Printed: rows, wall time, rows per second, and how much of
it the forests took (fit and score), per number of series.

A file of its own is a query of its own, so ``bench/cloudmon.py`` (60 unrelated
series) replays one series per query: there each forest serves one series, and
scikit-learn's cost per fit (0.1–0.2 s for 100 trees, whatever the rows) is most of the
time. With a query's series together, one fit serves them all.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.core.settings import load_settings
from bench.common import parser, write_json
from detector.catalogue import Query
from training import backtest, runner

#: issue 18's target for backtests of 1-minute series with daily seasonality
TARGET_ROWS_PER_S = 50_000


def shop_series(n: int, days: int, seed: int = 0) -> list[runner.SeriesInput]:
    rng = np.random.default_rng(seed)
    T = days * 1440
    t = np.arange(T)
    ts = pd.DatetimeIndex(pd.to_datetime(1_700_000_000 + 60 * t, unit="s"))
    out = []
    for i in range(n):
        level = rng.uniform(50, 500)
        phase = rng.uniform()
        x = level * (1 + 0.4 * np.sin(2 * np.pi * (t / 1440 + phase)))
        out.append(runner.SeriesInput(f"kpi/s{i}", ts, x + rng.normal(0, 0.03 * level, T)))
    return out


def measure(n: int, days: int) -> dict[str, Any]:
    inputs = shop_series(n, days)
    settings = load_settings(metrics=None, config=None)
    query = Query(name="kpi", promql="kpi", direction="both")
    forest_s = 0.0
    real = backtest.streaming_scores

    def timed(*args: Any, **kwargs: Any) -> np.ndarray:
        nonlocal forest_s
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            forest_s += time.perf_counter() - t

    backtest.streaming_scores = timed  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        frames = runner.backtest_series(inputs, settings, query)
        seconds = time.perf_counter() - t0
    finally:
        backtest.streaming_scores = real  # type: ignore[assignment]
    rows = sum(len(f) for f in frames)
    return {
        "series": n,
        "days": days,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "forest_share": round(forest_s / seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--series", default="1,10,100", help="comma-separated series counts")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    results = [measure(int(n), args.days) for n in args.series.split(",")]
    for r in results:
        met = "met" if r["rows_per_s"] >= TARGET_ROWS_PER_S else "not met"
        print(
            f"{r['series']:>4} series x {r['days']} days at 1 min: {r['rows']:>10,} rows in "
            f"{r['seconds']:6.1f} s: {r['rows_per_s']:>7,} rows/s (forests "
            f"{r['forest_share']:.0%} of it; target {TARGET_ROWS_PER_S:,}: {met})"
        )
    if args.json:
        write_json(args.json, {"command": " ".join(["python", *sys.argv]), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
