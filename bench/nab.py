"""Benchmark: the shipped detector configuration on the NAB development subset.

    python bench/nab.py                       # ../shared/nab/data, the four categories
    python bench/nab.py --data DIR --out var/nab --markdown

Every file is replayed in streaming order through the live detector with the
default settings (one configuration for all files) — exactly ``aiops backtest`` —
and the per-row ``anomaly_score`` (nonzero on detections only) is scored with
NAB's rules (training/nab.py, checked against shared/nab/nab_score.py in the tests).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.core.settings import Settings, load_settings
from bench.common import parser
from detector.catalogue import Query
from training import runner
from training.evaluate import summarise
from training.nab import load_windows, nab_scores, probation_rows

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "nab" / "data"
CATEGORIES = ("artificialNoAnomaly", "artificialWithAnomaly", "realAdExchange", "realAWSCloudwatch")
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
ANCHORS = {
    "Numenta HTM": (73.6, 68.4, 77.0),
    "contextOSE": (71.7, 68.1, 75.2),
    "ARTime": (71.1, 62.4, 76.0),
    "AWS Random Cut Forest": (56.7, 47.6, 63.1),
    "windowed Gaussian": (35.0, 16.7, 43.4),
}


def nab_inputs(data: Path, script: str) -> tuple[Settings, Query, dict[str, Any]]:
    """The shipped settings, the query every NAB file is replayed as, and NAB's labelled
    windows; exits when ``data`` holds no NAB data set."""
    labels = data / "labels" / "combined_windows.json"
    if not labels.exists():
        sys.exit(f"bench/{script}: no NAB data under {data}")
    query = Query(name="nab", promql="csv", direction="both")
    return load_settings(metrics=None, config=None), query, load_windows(labels)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="also write per-row results here")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    args = ap.parse_args()
    settings, query, windows = nab_inputs(args.data, "nab.py")

    frames = {}
    t0 = time.perf_counter()
    for category in args.categories.split(","):
        for path in sorted((args.data / category).glob("*.csv")):
            inp = runner.read_csv(path, args.data)
            frames[f"{inp.name}.csv"] = runner.backtest_series([inp], settings, query)[0]
    elapsed = time.perf_counter() - t0
    if args.out:
        for name, frame in frames.items():
            runner.write(frame, args.out, name.removesuffix(".csv"))

    result = nab_scores(
        {k: f["anomaly_score"].to_numpy() for k, f in frames.items()},
        {k: f["timestamp"] for k, f in frames.items()},
        windows,
    )
    rows = sum(len(f) for f in frames.values())
    no_anomaly = sum(
        int((f["anomaly_score"].iloc[probation_rows(len(f)) :] > 0).sum())
        for k, f in frames.items()
        if k.startswith("artificialNoAnomaly/")
    )
    no_anomaly_all = sum(
        int((f["anomaly_score"] > 0).sum())
        for k, f in frames.items()
        if k.startswith("artificialNoAnomaly/")
    )
    summary = summarise(frames, {k: windows.get(k, []) for k in frames})
    overall = summary[summary["file"] == "overall"].iloc[0]
    scores = tuple(result[p].score for p in PROFILES)
    print(f"files {len(frames)}, rows {rows}, replayed in {elapsed:.1f}s")
    print(f"NAB standard {scores[0]:.1f}  low-FP {scores[1]:.1f}  low-FN {scores[2]:.1f}")
    print(
        f"windows found {int(overall['found'])}/{int(overall['windows'])}, "
        f"detections {int(overall['detections'])}, FP per 1k rows {overall['fp_per_1k']:.2f}, "
        f"detections on artificialNoAnomaly {no_anomaly} "
        f"({no_anomaly_all} counting the probationary period), "
        f"detections without a reason {int(overall['unexplained'])}"
    )
    if args.markdown:
        print("\n| detector | standard | low FP | low FN |\n| --- | --- | --- | --- |")
        print(
            f"| **aiops (shipped defaults)** | **{scores[0]:.1f}** | {scores[1]:.1f} | "
            f"{scores[2]:.1f} |"
        )
        for name, (a, b, c) in ANCHORS.items():
            print(f"| {name} | {a} | {b} | {c} |")


if __name__ == "__main__":
    main()
