"""Benchmark: incidents across series on the labelled storm suite.

    python bench/storms.py                 # the figures, per kind, then per true incident
    python bench/storms.py --only spread   # storms whose name contains a text

Every series of every storm of ``training/storms.py`` (a shop whose frontend calls
checkout and search, checkout calls payments; faults that spread to the callers,
unrelated faults at the same time, single-series incidents, coincidences) is
replayed through the live detector with the shipped defaults, and its anomalies,
row by row, through the detector's own grouping with the storms' ``depends_on``
map. Printed: true incidents grouped into exactly one incident, probable cause
right at top 1, unrelated incidents wrongly merged, pages (incidents opened) per
true incident.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from training.storms import SPECS, storm_results, summarise_storms

TARGETS = {
    "grouped": ("≥ 0.95", lambda v: v >= 0.95),
    "cause_right": ("≥ 0.85", lambda v: v >= 0.85),
    "merged_wrongly": ("≤ 0.05", lambda v: v <= 0.05),
    "pages_per_incident": ("≤ 1.1", lambda v: v <= 1.1),
}


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="storms whose name contains this text")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    specs = [s for s in SPECS if not args.only or args.only in s.name]
    t0 = time.perf_counter()
    per = storm_results(specs)
    seconds = time.perf_counter() - t0
    console = Console(width=160)
    total = summarise_storms(per)
    table = Table(title=f"Storm suite: {len(specs)} storms, {len(per)} true incidents")
    table.add_column("kind")
    for col in ("incidents", "detected", "grouped", "cause right", "merged wrongly", "pages"):
        table.add_column(col, justify="right")
    for kind in [*sorted(per["kind"].unique()), "all"]:
        part = per if kind == "all" else per[per["kind"] == kind]
        s = summarise_storms(part)
        table.add_row(
            kind,
            str(len(part)),
            str(int(s["detected"])),
            _num(s["grouped"]),
            _num(s["cause_right"]),
            _num(s["merged_wrongly"]),
            _num(s["pages_per_incident"]),
        )
    console.print(table)
    for name, (target, ok) in TARGETS.items():
        v = total[name]
        verdict = "met" if not math.isnan(v) and ok(v) else "NOT met"
        console.print(f"{name}: {_num(v)} (target {target}: {verdict})")
    detail = Table(title="Per true incident")
    for col in ("storm", "incident", "members", "flagged", "incidents", "cause", "expected"):
        detail.add_column(col)
    for row in per.itertuples():
        detail.add_row(
            row.storm,
            str(row.incident),
            str(row.members),
            str(row.flagged),
            str(row.incidents),
            str(row.cause),
            row.expected_cause,
        )
    console.print(detail)
    console.print(f"replayed in {seconds:.0f} s")


if __name__ == "__main__":
    main()
