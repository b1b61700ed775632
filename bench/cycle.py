"""Benchmark: the detection cycle at 100 / 1,000 / 10,000 series, phase by phase, and the
naive per-series detector beside it (same run, same data).

    python bench/cycle.py                          # sizes 100,1000,10000
    python bench/cycle.py --sizes 1000 --cycles 8 --naive-max 200
    python bench/cycle.py --json var/bench/cycle.json

Each size runs in a fresh process (so its peak RSS is its own). The detector is the
service's own ``Detector.run_cycle`` on one seasonal (daily) query of 6 h at 1-minute
steps, fed by an in-memory stand-in for Prometheus (``bench/synthetic.py``), so the
fetch costs next to nothing and every other phase is the real one:

- **cold**: the first cycle: the whole window of the three seasonal slices (one, two,
  three days back) is fetched, and the forest is fitted;
- **steady**: later cycles, one minute apart: the slices come from the cache plus
  their newest points, the forest is reused (``AIOPS_MODEL_REFIT_SECONDS``);
- **refit**: a steady cycle that refits the forest (once an hour by default).

The naive detector (``bench/naive.py``) then runs one cycle over the same window and
slices: a separate IsolationForest fitted per series, explainers per series in a Python
loop. Above ``--naive-max`` series it runs on the first ``--naive-max`` and its time is
scaled to all of them (it is linear: one independent fit per series).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import markdown_table, median_of, parser, peak_rss_mb, run_fresh, write_json

PHASES = ("fetch", "features", "scoring", "explanation", "export")


def run_one(n: int, cycles: int, naive_max: int) -> dict:
    """Everything measured for one size (in this process)."""
    import numpy as np
    from prometheus_client import CollectorRegistry, generate_latest

    from aiops.core.settings import load_settings
    from bench.naive import naive_cycle
    from bench.synthetic import EPOCH, QUERY, SyntheticSource
    from detector.cycle import Detector
    from detector.pipeline import feature_spec

    rss_start = peak_rss_mb()
    settings = load_settings(metrics=None, config=None, max_series_per_query=max(n, 1000))
    query = QUERY
    source = SyntheticSource(n)
    registry = CollectorRegistry()
    det = Detector(settings, queries=[query], source=source, registry=registry)  # type: ignore[arg-type]

    reports = []

    def cycle(now: float) -> dict:
        report = det.run_cycle(now)
        assert not report.errors, report.errors
        reports.append(report)
        t0 = time.perf_counter()
        body = generate_latest(registry)
        phases = {p: report.phases.get(p, 0.0) for p in PHASES}
        return {
            "total": report.duration,
            **phases,
            "detect": sum(phases[p] for p in ("features", "scoring", "explanation", "export")),
            "scrape": time.perf_counter() - t0,
            "scrape_bytes": len(body),
            "series": sum(len(r) for r in report.results.values()),
            "anomalous": sum(r.anomalous for r in report.all_results()),
        }

    start = EPOCH - 60.0 * cycles
    cold = cycle(start)
    steady = [cycle(start + 60.0 * k) for k in range(1, cycles)]
    det.provider.forget(query.name)  # type: ignore[attr-defined]
    # the series anomalous before the refit cycle: the naive detector holds them too
    held = {key for (_, key) in det._onsets}
    refit = cycle(EPOCH)
    assert refit["series"] == n, refit
    rss_ours = peak_rss_mb()

    # the naive detector on the same window and seasonal slices as the refit cycle
    batch = source.fetch(
        query,
        end=EPOCH,
        lookback=query.lookback_seconds(settings),
        step=query.step_seconds(settings),
    )
    spec = feature_spec(query, settings, batch.step)
    past = det.seasons.slices(query, batch, spec)
    ours = {tuple(sorted(r.labels.items())): r for r in reports[-1].results[query.name]}
    k = min(n, naive_max)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    naive = naive_cycle(
        batch, query, settings, past=past, rows=range(k), active=held, timings=timings
    )
    naive_s = time.perf_counter() - t0
    scale = n / k

    agree = differ = gate_only = reasons_same = 0
    z_max_diff = 0.0
    for i, nv in enumerate(naive):
        r = ours[tuple(sorted(batch.labels[i].items()))]
        if nv.status == "ok":
            z_max_diff = max(
                z_max_diff,
                max(
                    abs(nv.zscores[w] - r.zscores[w])
                    for w in r.zscores
                    if np.isfinite(r.zscores[w])
                )
                if r.zscores
                else 0.0,
            )
        if nv.anomalous == r.anomalous:
            agree += 1
            if r.anomalous and nv.reasons == tuple(x.reason for x in r.reasons):
                reasons_same += 1
        else:
            differ += 1
            gate_only += int(nv.explained)  # the same reasons fired; the forests disagreed
    return {
        "series": n,
        "cycles": cycles,
        "rss_start_mb": rss_start,
        "peak_rss_mb": rss_ours,
        "cold": cold,
        "steady": median_of(steady, first=("series",)),
        "refit": refit,
        "naive": {
            "series_run": k,
            "seconds": naive_s * scale,
            "measured_seconds": naive_s,
            **{p: v * scale for p, v in timings.items()},
            "agree": agree,
            "differ": differ,
            "differ_forest_only": gate_only,
            "anomalous_both_same_reasons": reasons_same,
            "anomalous_naive": sum(x.anomalous for x in naive),
            "anomalous_ours": sum(
                ours[tuple(sorted(batch.labels[i].items()))].anomalous for i in range(k)
            ),
            "z_max_abs_diff": z_max_diff,
        },
    }


def measure(sizes: list[int], cycles: int, naive_max: int) -> list[dict]:
    """Each size in a fresh process."""
    return [
        run_fresh(
            __file__,
            *("--one", str(n), "--cycles", str(cycles), "--naive-max", str(naive_max)),
            what=f"size {n}",
        )
        for n in sizes
    ]


def table(rows: list[dict]) -> str:
    columns = ["series", "cycle", "total", *PHASES]
    columns += ["detect (no fetch)", "per 1k series", "peak RSS"]

    def cells(r: dict, kind: str) -> list[str]:
        c = r[kind]
        return [
            f"{r['series']:,}",
            kind,
            f"{c['total']:.2f} s",
            *(f"{c[p]:.2f}" for p in PHASES),
            f"{c['detect']:.2f} s",
            f"{c['detect'] / r['series'] * 1000:.2f} s",
            f"{r['peak_rss_mb']:.0f} MB",
        ]

    kinds = ("steady", "cold", "refit")
    return markdown_table(columns, [cells(r, k) for r in rows for k in kinds], left=(1,))


def naive_table(rows: list[dict]) -> str:
    columns = ["series", "ours: steady cycle", "ours: refit cycle", "naive per-series cycle"]
    columns += ["naive / steady", "naive / refit", "verdicts agree", "differ (forest only)"]
    out = []
    for r in rows:
        nv = r["naive"]
        scaled = "" if nv["series_run"] == r["series"] else " ¹"
        out.append(
            [
                f"{r['series']:,}",
                f"{r['steady']['detect']:.2f} s",
                f"{r['refit']['detect']:.2f} s",
                f"{nv['seconds']:.1f} s{scaled}",
                f"{nv['seconds'] / r['steady']['detect']:.0f}×",
                f"{nv['seconds'] / r['refit']['detect']:.0f}×",
                f"{nv['agree']}/{nv['series_run']}",
                f"{nv['differ']} ({nv['differ_forest_only']})",
            ]
        )
    return markdown_table(columns, out)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--cycles", type=int, default=6, help="cycles per size (1 cold + steady)")
    ap.add_argument("--naive-max", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.cycles, args.naive_max)))
        return
    rows = measure([int(s) for s in args.sizes.split(",")], args.cycles, args.naive_max)
    print(table(rows))
    print(naive_table(rows))
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
