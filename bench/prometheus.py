"""Benchmark: full detection cycles against a real Prometheus holding 1,000 and 10,000
backfilled series, with one query for all of them or one request per series.

    python bench/prometheus.py                        # sizes 1000,10000
    python bench/prometheus.py --sizes 1000 --per-series-max 200
    python bench/prometheus.py --json var/bench/prometheus.json

For each size, the series of ``bench/synthetic.py`` (a daily cycle, noise, 2 % with a
level shift, 1 % noisy) are written as OpenMetrics at 1-minute resolution over the
windows a detector asks for — the 6 h lookback ending at the benchmark's clock and the
same window one, two and three days back (the seasonal slices), each with margins for
the cycles that follow — turned into TSDB blocks by ``promtool tsdb create-blocks-from
openmetrics`` and served by Debian's ``/usr/bin/prometheus``. Then, each in a fresh
process (so the peak RSS is its own):

- **batched**: the service's ``Detector`` with one catalogue query whose PromQL
  (``bench_value``) returns every series: a cold first cycle (the seasonal slices are
  fetched whole, the forest is fitted) and steady cycles one minute apart (slices from
  the cache plus their newest points, forest reused);
- **per series**: the same detector with one catalogue entry per series
  (``bench_value{app="app00042"}``): one range request per series for the window and
  three per series for the slices. Above ``--per-series-max`` series it runs on that
  many and its times are scaled to all of them (requests are sequential: linear).

The values served by Prometheus are the synthetic ones exactly (shortest round-trip
decimals), so the batched cycle's verdicts are checked against the same cycle run on
the in-memory source.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import markdown_table, median_of, parser, peak_rss_mb, run_fresh, write_json
from bench.synthetic import DAY, QUERY, SyntheticSource, labels_of

LOOKBACK = 6 * 3600.0
STEP = 60.0
MARGIN = 10 * STEP


def write_history(path: Path, n: int, now: float, cycles: int) -> int:
    """OpenMetrics of ``n`` series over the lookback ending at ``now`` (+ the cycles) and
    the same window 1, 2 and 3 days back. Returns the number of samples."""
    import numpy as np

    source = SyntheticSource(n, incident_at=now)
    times = []
    for j in range(4):
        first = now - j * DAY - LOOKBACK - MARGIN
        last = now - j * DAY + cycles * STEP + MARGIN
        times.append(first + STEP * np.arange(round((last - first) / STEP) + 1))
    grid = np.concatenate(times[::-1])
    stamps = [str(int(t)) for t in grid]
    names = [
        f'bench_value{{namespace="{lb["namespace"]}",app="{lb["app"]}"}} ' for lb in labels_of(n)
    ]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("# HELP bench_value A synthetic benchmark series.\n# TYPE bench_value gauge\n")
        for lo in range(0, n, 500):
            values = source.values(grid, slice(lo, min(lo + 500, n)))
            for name, row in zip(names[lo : lo + 500], values.tolist(), strict=True):
                fh.write("".join(f"{name}{v!r} {s}\n" for v, s in zip(row, stamps, strict=True)))
        fh.write("# EOF\n")
    return n * len(grid)


def run_batched(url: str, n: int, now: float, cycles: int) -> dict:
    from aiops.core.settings import load_settings
    from detector.cycle import Detector

    settings = load_settings(
        prom_url=url, metrics=None, config=None, max_series_per_query=max(n, 1000)
    )
    query = QUERY
    det = Detector(settings, queries=[query])
    runs = []
    for k in range(cycles):
        t0 = time.perf_counter()
        report = det.run_cycle(now + k * STEP)
        wall = time.perf_counter() - t0
        assert not report.errors, report.errors
        runs.append({"total": wall, **report.phases, "series": len(report.results["bench"])})
    # the same first cycle on the in-memory source: the verdicts must be the same
    mem = Detector(settings, queries=[query], source=SyntheticSource(n, incident_at=now))  # type: ignore[arg-type]
    want = {
        tuple(sorted(r.labels.items())): r.anomalous for r in mem.run_cycle(now).results["bench"]
    }
    det2 = Detector(settings, queries=[query])
    got = {
        tuple(sorted(r.labels.items())): r.anomalous for r in det2.run_cycle(now).results["bench"]
    }
    return {
        "cold": runs[0],
        "steady": median_of(runs[1:]),
        "peak_rss_mb": peak_rss_mb(),
        "same_as_in_memory": got == want,
        "anomalous": sum(got.values()),
    }


def run_per_series(url: str, n: int, now: float, cycles: int, k: int) -> dict:
    from aiops.core.settings import load_settings
    from detector.catalogue import Query
    from detector.cycle import Detector

    settings = load_settings(prom_url=url, metrics=None, config=None)
    queries = [
        Query(
            name=f"s{i:05d}",
            promql=f'bench_value{{app="{lb["app"]}"}}',
            direction="both",
            labels=("namespace", "app"),
        )
        for i, lb in enumerate(labels_of(n)[:k])
    ]
    det = Detector(settings, queries=queries)
    runs = []
    for c in range(cycles):
        t0 = time.perf_counter()
        report = det.run_cycle(now + c * STEP)
        wall = time.perf_counter() - t0
        assert not report.errors, list(report.errors.items())[:3]
        runs.append({"total": wall, **report.phases, "series": len(report.all_results())})
    scale = n / k
    cold, steady = runs[0], median_of(runs[1:])
    return {
        "series_run": k,
        "cold": {key: v * scale for key, v in cold.items()},
        "steady": {key: v * scale for key, v in steady.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(sizes: list[int], cycles: int, per_series_max: int, keep: Path | None) -> list[dict]:
    from demo.prometheus import PROMTOOL, PrometheusProcess, scrape_config

    out = []
    for n in sizes:
        now = (time.time() // STEP) * STEP - 3 * 3600.0  # well inside retention, before the head
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-prom-{n}-"))
        try:
            t0 = time.perf_counter()
            samples = write_history(tmp / "history.om", n, now, cycles)
            written = time.perf_counter() - t0
            data = tmp / "prom" / "data"
            data.mkdir(parents=True)
            t0 = time.perf_counter()
            subprocess.run(
                [
                    PROMTOOL,
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    "-q",
                    str(tmp / "history.om"),
                    str(data),
                ],
                check=True,
                capture_output=True,
                timeout=3600,
            )
            backfilled = time.perf_counter() - t0
            (tmp / "history.om").unlink()
            prom = PrometheusProcess(tmp / "prom", scrape_config({}))
            prom.start(timeout=300)
            try:
                row = {
                    "series": n,
                    "samples": samples,
                    "write_s": written,
                    "promtool_s": backfilled,
                    "batched": child("batched", prom.url, n, now, cycles, 0),
                    "per_series": child(
                        "per_series", prom.url, n, now, min(cycles, 3), min(n, per_series_max)
                    ),
                }
            finally:
                prom.stop()
            out.append(row)
        finally:
            if keep is None:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def child(mode: str, url: str, n: int, now: float, cycles: int, k: int) -> dict:
    args = ("--child", mode, url, str(n), repr(now), str(cycles), str(k))
    return run_fresh(__file__, *args, what=f"{mode} at {n}")


def table(rows: list[dict]) -> str:
    columns = ["series", "queries", "cycle", "full cycle", "fetch (range queries)", "features"]
    columns += ["scoring", "explanation", "export", "peak RSS"]
    out = []
    for r in rows:
        for mode, label in (("batched", "one for all series"), ("per_series", "one per series")):
            m = r[mode]
            note = ""
            if mode == "per_series" and m["series_run"] != r["series"]:
                note = " ¹"
            for kind in ("steady", "cold"):
                c = m[kind]
                out.append(
                    [
                        f"{r['series']:,}",
                        label,
                        kind,
                        f"{c['total']:.2f} s{note}",
                        f"{c['fetch']:.2f} s",
                        *(f"{c[p]:.2f}" for p in ("features", "scoring", "explanation", "export")),
                        f"{m['peak_rss_mb']:.0f} MB",
                    ]
                )
    return markdown_table(columns, out, left=(1, 2))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--cycles", type=int, default=4, help="cycles per mode (1 cold + steady)")
    ap.add_argument("--per-series-max", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, url, n, now, cycles, k = args.child
        if mode == "batched":
            res = run_batched(url, int(n), float(now), int(cycles))
        else:
            res = run_per_series(url, int(n), float(now), int(cycles), int(k))
        print(json.dumps(res))
        return
    rows = measure(
        [int(s) for s in args.sizes.split(",")], args.cycles, args.per_series_max, args.keep
    )
    print(table(rows))
    for r in rows:
        b = r["batched"]
        print(
            f"{r['series']:,} series: {r['samples']:,} samples backfilled (written in "
            f"{r['write_s']:.0f} s, promtool {r['promtool_s']:.0f} s); batched verdicts equal to "
            f"the in-memory run: {b['same_as_in_memory']} ({b['anomalous']} anomalous)"
        )
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
