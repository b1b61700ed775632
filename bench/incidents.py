"""Benchmark: the shipped detector configuration on the labelled SLO incident suite.

    python bench/incidents.py                    # per-reason table, then per-case table
    python bench/incidents.py --only lookalike   # cases whose name contains a text
    python bench/incidents.py --warmup 360       # count alarms only after a full lookback

Every case of ``training/incidents.py`` (generated SLO and KPI series with injected
incidents and look-alikes) is replayed in streaming order through the live detector
with the default settings and the catalogue query of its metric — exactly
``aiops backtest`` — and scored per reason: recall of the right reason, false alarms
outside the incident windows, look-alikes that fired.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
from rich.console import Console
from rich.table import Table

from aiops.core.settings import load_settings
from training.incidents import case_results, incident_cases, summarise

REASON_CAPTION = (
    "tp: incidents of that reason detected with it · recall: tp / positives · fp: cases "
    "with a false alarm carrying that reason (overall: any false alarm) · precision: "
    "tp / (tp + fp) (overall: detected / (detected + fp)) · look-alikes fired: with that reason"
)


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def reason_table(summary: pd.DataFrame) -> Table:
    table = Table(title="Per reason", title_justify="left", caption=REASON_CAPTION)
    for column in ("reason", "positives", "detected", "tp", "recall", "fp", "precision"):
        table.add_column(column, justify="left" if column == "reason" else "right")
    table.add_column("look-alikes fired", justify="right")
    records = summary.to_dict("records")
    for i, r in enumerate(records):
        table.add_row(
            r["reason"],
            str(r["positives"]),
            str(r["detected"]),
            str(r["tp"]),
            _num(r["recall"]),
            str(r["fp"]),
            _num(r["precision"]),
            f"{r['negatives_fired']}/{r['negatives']}",
            style="bold" if r["reason"] == "overall" else None,
            end_section=i + 2 == len(records),
        )
    return table


SHORT = {
    "level_shift": "level",
    "volatility_spike": "volatility",
    "trend_break": "trend",
    "percent_change": "percent",
    "spike": "spike",
}


def _short(reasons: str) -> str:
    return ",".join(SHORT.get(r, r) for r in reasons.split(";") if r)


def case_table(per_case: pd.DataFrame) -> Table:
    table = Table(
        title="Per case",
        title_justify="left",
        caption="window: incident rows [start, end) · delay: first anomalous row in the window "
        "· false alarms: onset rows of episodes outside it",
    )
    table.add_column("case", no_wrap=True)
    table.add_column("metric")
    table.add_column("window", justify="right")
    table.add_column("found", justify="center")
    table.add_column("reasons in window")
    table.add_column("delay", justify="right")
    table.add_column("false alarms (rows)")
    table.add_column("false reasons")
    for r in per_case.to_dict("records"):
        if r["expected"]:
            found = "ok" if r["reason_ok"] else ("other reason" if r["detected"] else "MISSED")
        else:
            found = "FIRED" if r["false_alarms"] else "quiet"
        alarms = f"{r['false_alarms']} ({r['false_onsets']})" if r["false_alarms"] else "0"
        delay = "" if math.isnan(r["first_delay_min"]) else f"{r['first_delay_min']:.0f}m"
        table.add_row(
            r["name"],
            f"{r['metric']} ({r['direction']})",
            r["window"] or "-",
            found,
            _short(r["reasons_seen"]),
            delay,
            alarms,
            _short(r["false_reasons"]),
        )
    return table


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="only cases whose name contains this text")
    ap.add_argument("--warmup", type=int, default=None, help="rows whose alarms are not counted")
    args = ap.parse_args()
    settings = load_settings(metrics=None, config=None)
    t0 = time.perf_counter()
    cases = [c for c in incident_cases() if args.only in c.name]
    if not cases:
        sys.exit(f"bench/incidents.py: no case name contains {args.only!r}")
    per_case = case_results(cases, settings, warmup=args.warmup)
    elapsed = time.perf_counter() - t0
    rows = sum(len(c.values) for c in cases)
    positives = sum(c.positive for c in cases)
    console = Console(width=None if sys.stdout.isatty() else 220)
    console.print(
        f"cases {len(cases)} ({positives} incidents, {len(cases) - positives} look-alikes), "
        f"rows {rows}, generated and replayed in {elapsed:.1f}s"
    )
    console.print(reason_table(summarise(per_case)))
    console.print(case_table(per_case))
    unexplained = int(per_case["unexplained"].sum())
    console.print(f"anomalous rows without a reason: {unexplained}")


if __name__ == "__main__":
    main()
