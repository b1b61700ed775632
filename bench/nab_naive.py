"""Benchmark: the NAB subset replayed by the detector and by a naive per-row loop, same data.

    python bench/nab_naive.py                      # the four categories, every row
    python bench/nab_naive.py --files 4            # the 4 smallest files only (quick)
    python bench/nab_naive.py --only load_balancer,c0d644   # files whose name has one of these

**Ours** is ``aiops backtest`` as ``bench/nab.py`` runs it: per file, the feature function
over the whole history at once, one forest fitted every 500 rows (on the rows before)
scoring the next 500 in one call, the explainers over every row in one pass.

**Naive** is how a per-series streaming tool handles each new point (a cycle): score
that row with the series' scikit-learn IsolationForest (one call per row), run the four
explainers and the verdict rule for that row (on the recent rows the rule looks back on),
carry the hysteresis to the next row. Its forest is refitted on the same rows at the same
rows as ours, by the same rules (``detector.scoring.fit_rows`` / ``scoring_rows``: an
undefined feature of a ready row is neutral; no verdict where there is no score; an onset
whose row had an undefined feature weighs its forest factor as 0.5), so the two must
agree exactly: same scores, verdicts, reasons and NAB score.
(Refitting the forest at every row — one fit per cycle — would be 121,702 fits; the
time one fit takes is measured and that cost is given beside, not run.)

Features come from the same causal feature function for both: what a row sees is what a
row-by-row computation would see (tests/training/test_backtest.py), and recomputing
them per row would make the naive loop quadratic in the length of the file.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import parser, write_json
from bench.nab import CATEGORIES, DATA, PROFILES, nab_inputs
from detector.catalogue import Query
from detector.explain import PASSIVE_REASONS, Evidence, evaluate
from detector.features import compute_features
from detector.pipeline import feature_spec
from detector.scoring import MIN_FIT_ROWS, IsolationForestScorer, fit_rows, scoring_rows
from detector.verdict import (
    LEVEL_ALLOWED,
    LEVEL_MEMORY,
    LEVEL_MIN_KNOWN,
    SPIKE_ALLOWED,
    SPIKE_MEMORY,
    SPIKE_MIN_KNOWN,
    SPIKE_RUNG,
    SPIKE_RUNGS,
    Judgement,
    Thresholds,
    judge,
    reasons_behind,
)
from training import runner
from training.nab import nab_scores
from training.runner import PASSIVE_WEIGHT


def naive_file(values: np.ndarray, step: float, settings, query: Query, refit_every: int = 500):
    """Per-row replay of one series; returns (forest score, anomalous, event score, reasons)."""
    spec = feature_spec(query, settings, step, weekly=True)
    th = Thresholds.from_settings(settings)
    direction = query.direction
    f = compute_features(values[None, :], spec)
    band_z = np.abs(f.band_z[0])
    # each reason's strength at every row, before any gate (causal: a row's strength
    # uses the rows up to it), for the series' own level of that reason
    ready = f.ready[0]
    rises = {
        ev.reason: _rises(np.nan_to_num(ev.strength[0], nan=0.0), ready)
        for ev in evaluate(th.explainers(direction), f)
        if ev.reason != "spike" and ev.strength is not None
    }
    T = len(values)
    lag = spec.longest
    first = spec.warmup_points + lag + 8
    # the rows the verdict rule looks back on: the novelty history and its gap, windows
    tail = th.history + lag + max(spec.window_points.values()) + 2
    score = np.full(T, np.nan)
    anomalous = np.zeros(T, dtype=bool)
    event = np.zeros(T)
    reasons = np.full(T, "", dtype=object)
    forest: IsolationForestScorer | None = None
    prev = False
    escalated = False  # the current anomaly has been held by an active reason
    next_fit = first  # a forest is tried at every row until one is fitted, then refitted
    for t in range(T):
        if t >= next_fit:
            forest = None
            next_fit = t + 1
            ii, tt = np.nonzero(f.ready[:, : t - lag])
            if len(ii) >= MIN_FIT_ROWS:
                if len(ii) > 20000:
                    ii, tt = ii[-20000:], tt[-20000:]
                # the complete rows, or all of them with undefined features neutral
                X = fit_rows(f.matrix(direction, (ii, tt)))
                if len(X) >= MIN_FIT_ROWS:
                    forest = IsolationForestScorer(random_state=0).fit(X)
                    next_fit = t + refit_every
        at = (np.array([0]), np.array([t]))
        if forest is not None:
            # an undefined feature of a ready row is neutral (0); a row not ready stays NaN
            row = scoring_rows(f, direction, at)
            if np.isfinite(row).all():
                score[t] = -forest.forest_.score_samples(row)[0]
        lo = max(0, t + 1 - tail)
        recent = f.take(slice(lo, t + 1))
        scores = np.full(recent.ready.shape, np.nan)
        scores[0, -1] = score[t]
        # the series' own levels, counted here row by row (the slice is too short)
        levels = {
            "spike": np.array([_spike_level(band_z[max(0, t - SPIKE_MEMORY) : t], th.spike_z)])
        }
        lo_r = max(0, t - LEVEL_MEMORY)
        for reason, up in rises.items():
            levels[reason] = np.array([_reason_level(up, ready, lo_r, t)])
        j = judge(recent, th, direction, scores, lag, levels=levels)
        strict, relaxed = bool(j.strict[0, -1]), bool(j.relaxed[0, -1])
        if np.isnan(score[t]):  # no forest yet, or the row is not ready: no verdict
            strict = relaxed = False
        now = strict or (prev and relaxed)
        # an active reason (not a passive one such as spike) at the strict thresholds
        active = strict and any(
            bool(ev.fired[0, -1]) for ev in j.strict_evidence if ev.reason not in PASSIVE_REASONS
        )
        if now:
            last = Judgement(
                j.strict[:, -1:],
                j.relaxed[:, -1:],
                [_last(ev) for ev in j.strict_evidence],
                [_last(ev) for ev in j.relaxed_evidence],
                j.weight[:, -1:],
            )
            evidence = reasons_behind(last, np.array([[True]]))
            fired = [ev.reason for ev in evidence if ev.fired[0, 0]]
            reasons[t] = ";".join(fired)
            # a detection: an onset, or an active reason joining an anomaly that only
            # passive ones held (training.runner.event_score)
            if not prev or (active and not escalated):
                # 0.5 where the row had an undefined feature (scored with it neutral)
                defined = np.isfinite(f.matrix(direction, at)).all()
                forest_score = score[t] if defined else 0.5
                weight = np.log1p(max(j.weight[0, -1], 1.0)) * np.sqrt(max(len(fired), 1.0))
                share = 1.0 if active else PASSIVE_WEIGHT
                event[t] = weight * forest_score * share
            escalated = active if not prev else (escalated or active)
        anomalous[t] = now
        prev = now
    return score, anomalous, event, reasons


def _spike_level(before: np.ndarray, base: float) -> float:
    """detector.verdict.spike_levels for one point, from the |band z| of the points
    before it, in a plain loop: the lowest rung that at most SPIKE_ALLOWED reached."""
    known = before[np.isfinite(before)]
    if len(known) < SPIKE_MIN_KNOWN:
        return base
    for k in range(SPIKE_RUNGS):
        rung = base * SPIKE_RUNG**k
        if (known >= rung).sum() <= SPIKE_ALLOWED:
            return rung
    return base * SPIKE_RUNG**SPIKE_RUNGS


def _rises(strength: np.ndarray, ready: np.ndarray) -> list[np.ndarray]:
    """Per rung SPIKE_RUNG**k: where the strength (0 where not ready) rises to it."""
    s = np.where(ready, strength, 0.0)
    out = []
    for k in range(SPIKE_RUNGS):
        hit = s >= SPIKE_RUNG**k
        out.append(hit & ~np.concatenate([[False], hit[:-1]]))
    return out


def _reason_level(rises: list[np.ndarray], ready: np.ndarray, lo: int, t: int) -> float:
    """detector.verdict.reason_levels for row ``t``, from rows lo..t-1 alone: the lowest
    rung the strength rose to at most LEVEL_ALLOWED times there."""
    if int(ready[lo:t].sum()) < LEVEL_MIN_KNOWN:
        return 1.0
    for k in range(SPIKE_RUNGS):
        if int(rises[k][lo:t].sum()) <= LEVEL_ALLOWED:
            return SPIKE_RUNG**k
    return SPIKE_RUNG**SPIKE_RUNGS


def _last(ev: Evidence) -> Evidence:
    def col(a):
        return a[:, -1:] if isinstance(a, np.ndarray) else a

    return Evidence(
        ev.reason,
        col(ev.fired),
        col(ev.window),
        col(ev.zscore),
        col(ev.delta),
        col(ev.threshold),
        col(ev.strength),
    )


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--files", type=int, default=0, help="only the N smallest files (0: all)")
    ap.add_argument(
        "--only", help="only the files whose name contains one of these (comma-separated)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    settings, query, windows = nab_inputs(args.data, "nab_naive.py")
    paths = [p for c in CATEGORIES for p in sorted((args.data / c).glob("*.csv"))]
    if args.files:
        paths = sorted(paths, key=lambda p: p.stat().st_size)[: args.files]
    if args.only:
        paths = [p for p in paths if any(w in p.name for w in args.only.split(","))]

    ours_s = naive_s = 0.0
    ours, naive, stamps = {}, {}, {}
    mismatch: list[str] = []
    rows = 0
    for path in paths:
        inp = runner.read_csv(path, args.data)
        name = f"{inp.name}.csv"
        t0 = time.perf_counter()
        frame = runner.backtest_series([inp], settings, query)[0]
        t1 = time.perf_counter()
        step = runner.infer_step(inp.timestamps)
        grid = runner.on_grid(inp.timestamps, inp.values, step)  # as the replay lays it
        score, anomalous, event, reasons = naive_file(grid.values, step, settings, query)
        score, anomalous, event = score[grid.rows], anomalous[grid.rows], event[grid.rows]
        reasons = [reasons[i] for i in grid.rows]
        t2 = time.perf_counter()
        ours_s += t1 - t0
        naive_s += t2 - t1
        rows += len(frame)
        ours[name] = frame["anomaly_score"].to_numpy()
        naive[name] = np.round(event, 6)
        stamps[name] = frame["timestamp"]
        same = (
            np.array_equal(frame["anomalous"].to_numpy(), anomalous.astype(int))
            and np.array_equal(ours[name], naive[name])
            and np.array_equal(frame["forest_score"].to_numpy(), np.round(score, 6), equal_nan=True)
            and list(frame["reasons"]) == list(reasons)
        )
        if not same:
            mismatch.append(name)

    # one forest fit per cycle instead: the time of one fit on a file's training rows
    fit_s = _fit_time(settings, query, paths[-1], args.data)
    nab_ours = nab_scores(ours, stamps, windows)
    nab_naive = nab_scores(naive, stamps, windows)
    print(f"files {len(paths)}, rows {rows:,}")
    print(f"ours (vectorised replay)         {ours_s:8.1f} s   {ours_s / rows * 1e6:7.0f} µs/row")
    print(f"naive (row by row)               {naive_s:8.1f} s   {naive_s / rows * 1e6:7.0f} µs/row")
    print(f"naive / ours                     {naive_s / ours_s:8.1f}×")
    print(
        f"naive with a forest fitted every cycle (not run): + {fit_s * 1000:.0f} ms per row, "
        f"{(naive_s + fit_s * rows) / 3600:.1f} h, {(naive_s + fit_s * rows) / ours_s:,.0f}× ours"
    )
    for profile in PROFILES:
        print(
            f"NAB {profile:<20} ours {nab_ours[profile].score:5.1f}   "
            f"naive {nab_naive[profile].score:5.1f}"
        )
    print(
        "outputs identical (forest score, verdict, reasons, event score on every row): "
        + ("yes" if not mismatch else f"NO: {', '.join(mismatch)}")
    )
    write_json(
        args.json,
        {
            "files": len(paths),
            "rows": rows,
            "ours_s": ours_s,
            "naive_s": naive_s,
            "fit_per_cycle_s": fit_s,
            "nab_ours": [nab_ours[p].score for p in PROFILES],
            "nab_naive": [nab_naive[p].score for p in PROFILES],
            "identical": not mismatch,
            "mismatch": mismatch,
        },
    )


def _fit_time(settings, query: Query, path: Path, root: Path) -> float:
    """Median wall time of fitting one forest on a file's baseline feature rows."""
    inp = runner.read_csv(path, root)
    step = runner.infer_step(inp.timestamps)
    spec = feature_spec(query, settings, step, weekly=True)
    f = compute_features(runner.on_grid(inp.timestamps, inp.values, step).values[None, :], spec)
    ii, tt = np.nonzero(f.ready)
    X = fit_rows(f.matrix(query.direction, (ii[-20000:], tt[-20000:])))
    times = []
    for seed in range(5):
        t0 = time.perf_counter()
        IsolationForestScorer(random_state=seed).fit(X)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
