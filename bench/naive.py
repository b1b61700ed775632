"""The naive per-series detector the benchmarks compare with.

The way per-series anomaly tools work: a Python loop over the series; for each one its
own features, its own IsolationForest fitted at every cycle on that series' baseline
rows alone, and the four explainers evaluated for that series alone. It uses the same
feature function, explainers and verdict rule as the detector, and the same scoring rules
(``detector.scoring.fit_rows`` / ``scoring_rows``: an undefined feature of a ready row
is neutral; a series without a score is warming up), so where the two differ
it is for one reason only: the forest (one per series, refitted each cycle, against one
per query fitted on the rows of all its series and reused for an hour).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from aiops.core.settings import Settings
from detector.catalogue import Query
from detector.explain import reasons_at
from detector.features import compute_features
from detector.pipeline import feature_spec, training_rows
from detector.scoring import MIN_FIT_ROWS, IsolationForestScorer, fit_rows, scoring_rows
from detector.source import SeriesBatch
from detector.verdict import Thresholds, hysteresis, judge, reasons_behind


@dataclass
class NaiveResult:
    status: str
    score: float = float("nan")
    anomalous: bool = False
    reasons: tuple[str, ...] = ()
    zscores: dict[str, float] = field(default_factory=dict)
    explained: bool = False  # some reason fired strictly before the forest's gate


def naive_cycle(
    batch: SeriesBatch,
    query: Query,
    settings: Settings,
    *,
    past: np.ndarray | None = None,
    rows: range | None = None,
    active: set[tuple[tuple[str, str], ...]] | None = None,
    timings: dict[str, float] | None = None,
) -> list[NaiveResult]:
    """One cycle of the per-series detector over ``rows`` of ``batch`` (default: all)."""
    th = Thresholds.from_settings(settings)
    spec = feature_spec(query, settings, batch.step)
    timings = {} if timings is None else timings
    for phase in ("features", "scoring", "explanation"):
        timings.setdefault(phase, 0.0)
    out = []
    for i in rows if rows is not None else range(len(batch)):
        t0 = time.perf_counter()
        f = compute_features(
            batch.values[i : i + 1], spec, None if past is None else past[:, i : i + 1]
        )
        t1 = time.perf_counter()
        # the series' candidate rows; fitted on as the live forest is (``fit_rows``: the
        # complete rows, or all of them with undefined features neutral)
        X = f.matrix(query.direction, training_rows(f, spec))
        X = fit_rows(X) if len(X) >= MIN_FIT_ROWS else X[:0]
        scores = np.full(f.ready.shape, np.nan)
        if len(X) >= MIN_FIT_ROWS:
            forest = IsolationForestScorer(random_state=0).fit(X)
            # an undefined feature of the ready newest row is neutral (``scoring_rows``)
            scores[:, -1] = forest.score(scoring_rows(f.take(slice(-1, None)), query.direction))
        t2 = time.perf_counter()
        j = judge(f, th, query.direction, scores, spec.longest)
        was = np.array([tuple(sorted(batch.labels[i].items())) in (active or ())])
        verdict = hysteresis(j.strict[:, -1:], j.relaxed[:, -1:], was)
        ready = bool(f.ready[0, -1])
        if not ready or not np.isfinite(scores[0, -1]):  # no forest, no score: warming up
            out.append(NaiveResult("warming_up"))
        else:
            full = np.zeros(j.strict.shape, dtype=bool)
            full[:, -1:] = verdict
            evidence = reasons_behind(j, full)
            anomalous = bool(verdict[0, 0])
            reasons = reasons_at(evidence, f.windows, 0, f.ready.shape[1] - 1) if anomalous else []
            explained = bool(
                (f.mature & np.any([ev.fired for ev in j.strict_evidence], axis=0))[0, -1]
            )
            out.append(
                NaiveResult(
                    "ok",
                    float(scores[0, -1]),
                    anomalous,
                    tuple(r.reason for r in reasons),
                    {w: float(f.z[w][0, -1]) for w in f.windows},
                    explained,
                )
            )
        t3 = time.perf_counter()
        timings["features"] += t1 - t0
        timings["scoring"] += t2 - t1
        timings["explanation"] += t3 - t2
    return out
