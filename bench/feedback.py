"""Benchmark: simulated operators teach the detector on the cloud monitoring set.

    python bench/feedback.py                  # ../shared/cloudmon, every file
    python bench/feedback.py --json var/feedback.json

Every file of ``DATASET/data`` is replayed in streaming order through the live detector
with the shipped defaults (as ``aiops backtest`` does). An operator then gives a verdict
on every alarm episode that begins in the first half of the file, from the labels: a
"real incident" when the episode touches a labelled point (within the scorer's
``DELAY`` rows), else "not an incident", given when the episode ends, with the reasons
the episode had at their strongest (``detector.feedback``). The file is replayed again
with those verdicts in force from the time each was given (``training.backtest.replay``
with ``floors``), and both replays are scored by the data set's own scorer on the
**second half** only (the half no verdict was given on): point-adjusted F1, incidents
found, alarmed normal points per 1,000 and alarm episodes outside the labels.

The verdicts come from the labels, so this measures what feedback can do for an
operator who is always right; nothing in the configuration is tuned to the files.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.core.settings import load_settings
from bench.cloudmon import DATASET, load_scorer
from bench.common import markdown_table, parser, write_json
from detector.catalogue import Query
from detector.feedback import Verdict, floor_columns, seen
from detector.pipeline import feature_spec
from detector.verdict import Thresholds
from training import runner
from training.backtest import Replay, replay


def episodes(anomalous: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    a = np.concatenate([[False], anomalous.astype(bool), [False]])
    edges = np.flatnonzero(a[1:] != a[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def peak_reasons(r: Replay, a: int, b: int) -> list[dict[str, float]]:
    """The reasons of series 0 that fired in [a, b), each at its strongest."""
    out = []
    shape = r.anomalous.shape
    for ev in r.evidence:
        fired = np.asarray(ev.fired)[0, a:b]
        if not fired.any() or ev.zscore is None:
            continue
        z = np.abs(np.nan_to_num(np.broadcast_to(ev.zscore, shape)[0, a:b], nan=0.0))
        t = int(np.argmax(np.where(fired, z, -1.0)))
        thr = float(np.broadcast_to(ev.threshold, shape)[0, a + t])
        out.append({"reason": ev.reason, "zscore": float(z[t]), "threshold": thr})
    return out


def operator_verdicts(
    name: str, r: Replay, label_grid: np.ndarray, cut: int, t0: float, step: float, delay: int
) -> list[Verdict]:
    """An always-right operator's verdicts on the episodes that begin before ``cut``."""
    out = []
    for a, b in episodes(r.anomalous[0]):
        if a >= cut:
            break
        real = bool(label_grid[max(0, a - delay) : b + delay].any())
        reasons = seen(peak_reasons(r, a, b))
        if reasons:
            verdict = "incident" if real else "false_alarm"
            out.append(Verdict(name, verdict, t0 + (b - 1) * step, reasons))
    return out


def run(dataset: Path, before_dir: Path, after_dir: Path, scorer: Any) -> dict[str, Any]:
    settings = load_settings(metrics=None, config=None)
    query = Query(name="backtest", promql="csv", direction="both")
    th = Thresholds.from_settings(settings)
    half_life = settings.feedback_half_life_days * 86400.0
    data = dataset / "data"
    series = {s.name: s for s in scorer.load_dataset(dataset)}
    halves = []
    counts = {"false_alarm": 0, "incident": 0}
    for path in runner.find_csvs(data):
        inp = runner.read_csv(path, data)
        s = series[path.name]
        step = runner.infer_step(inp.timestamps)
        grid = runner.on_grid(inp.timestamps, inp.values, step)
        values = grid.values[None, :]
        spec = feature_spec(query, settings, step, weekly=True)
        t0 = float(inp.timestamps.asi8[0] / 1e9)
        times = t0 + np.arange(values.shape[1]) * step
        label_grid = np.zeros(values.shape[1], dtype=bool)
        label_grid[grid.rows] = s.label.astype(bool)
        cut_row = len(s.ts) // 2
        cut = int(grid.rows[cut_row])
        r0 = replay(values, spec, th, query.direction)
        verdicts = operator_verdicts(path.name, r0, label_grid, cut, t0, step, scorer.DELAY)
        for v in verdicts:
            counts[v.verdict] += 1
        floors = floor_columns(
            verdicts,
            [path.name],
            times,
            max_raise=settings.feedback_max_raise,
            half_life=half_life,
        )
        r1 = replay(values, spec, th, query.direction, floors=floors) if floors else r0
        for r, out in ((r0, before_dir), (r1, after_dir)):
            (frame,) = runner.frames(r, [inp], [grid], th.z_thresh)
            runner.write(frame.iloc[cut_row:], out, inp.name)
        halves.append(
            scorer.Series(s.name, s.ts[cut_row:], s.value[cut_row:], s.label[cut_row:], s.step)
        )
    return {"series": halves, "verdicts": counts}


def score(scorer: Any, halves: list, out: Path) -> dict[str, Any]:
    outputs = {s.name: scorer.detector_outputs(s, out)[""] for s in halves}
    result = scorer.evaluate(halves, [scorer.Method("aiops", None, outputs)], scorer.DELAY, "0")
    overall = result["overall"]["aiops"]
    outside = 0
    for s in halves:
        alarm = outputs[s.name].alarm
        for a, b in episodes(alarm):
            if not s.label[max(0, a - scorer.DELAY) : b + scorer.DELAY].any():
                outside += 1
    return {
        "pa_f1": overall["pa"]["f1"],
        "precision": overall["pa"]["precision"],
        "recall": overall["pa"]["recall"],
        "incidents_found": overall["events"]["recall_any"],
        "fa_pts_per_1k": overall["events"]["fa_pts_per_1k"],
        "episodes_outside_labels": outside,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    scorer = load_scorer(args.dataset)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "before", Path(tmp) / "after"
        got = run(args.dataset, before, after, scorer)
        rows = {
            "without feedback": score(scorer, got["series"], before),
            "with feedback": score(scorer, got["series"], after),
        }
    elapsed = time.perf_counter() - t0
    columns = [
        "second half",
        "PA-F1",
        "precision",
        "recall",
        "incidents found",
        "alarmed normal points / 1,000",
        "episodes outside labels",
    ]
    table = markdown_table(
        columns,
        [
            [
                name,
                f"{r['pa_f1']:.3f}",
                f"{r['precision']:.3f}",
                f"{r['recall']:.3f}",
                f"{r['incidents_found']:.0%}",
                f"{r['fa_pts_per_1k']:.1f}",
                str(r["episodes_outside_labels"]),
            ]
            for name, r in rows.items()
        ],
        left=(0,),
    )
    v = got["verdicts"]
    print(
        f"{len(got['series'])} files; verdicts on the first halves: {v['false_alarm']} not an"
        f" incident, {v['incident']} real incident; replayed twice in {elapsed:.0f} s"
    )
    print(table)
    if args.json:
        write_json(args.json, {"rows": rows, "verdicts": v, "seconds": round(elapsed, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
