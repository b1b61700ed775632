"""Detection of one query's batch: features → IsolationForest score → explainers → results.

Everything is computed for all series of the batch at once; Python objects are
built only for the results handed to the exporter and the CLI.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from aiops.core.series import label_key, series_key
from aiops.core.settings import Settings
from detector.catalogue import Query
from detector.explain import Evidence, reasons_at
from detector.features import Features, FeatureSpec, compute_features, feature_names
from detector.result import SeriesResult
from detector.scoring import MIN_FIT_ROWS, ModelProvider, scoring_rows
from detector.source import SeriesBatch
from detector.verdict import (
    Judgement,
    Thresholds,
    calibrated_score,
    forest_gate,
    hysteresis,
    judge,
    reasons_behind,
)


def feature_spec(
    query: Query, settings: Settings, step: float, *, weekly: bool = False
) -> FeatureSpec:
    """The feature configuration of a query: its windows (``windows:``, default 5m/15m/1h)
    and a baseline that is the lookback before the longest window.

    ``weekly``: with the weekly profile as each series' alternative where the query's
    seasonality is auto: over a long history (backtests, training: the choice is made
    from it), or live for a query some of whose series the nightly retrain found
    weekly (``trained_weekly``). Otherwise the live window is daily (or as the query
    says): a 6 h window cannot tell a weekly series from a daily one."""
    windows = query.window_seconds()
    spec = FeatureSpec(step=step, windows=windows, min_scale=query.min_scale)
    lookback = query.lookback_seconds(settings)
    baseline = max(lookback - spec.longest * step, spec.min_baseline_points * step)
    return FeatureSpec(
        step=step,
        windows=windows,
        min_scale=query.min_scale,
        baseline=baseline,
        season=query.season_seconds(),
        season_alt=query.season_alt_seconds() if weekly else 0.0,
    )


#: Series per chunk. A chunk's features are a few dozen (series × time) arrays: chunks
#: bound the memory of a cycle whatever the number of series, keep the arrays small
#: enough for the CPU caches, and are what the threads share out. Results do not depend
#: on it (every series is computed alone).
CHUNK_SERIES = 500


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: The forest is fitted on at most this many baseline rows, sampled over all series.
MAX_TRAIN_ROWS = 20000


def training_rows(
    f: Features, spec: FeatureSpec, *, max_rows: int = MAX_TRAIN_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(series, time) pairs of the baseline part that may train the forest.

    The newest ``longest window`` is left out so the incident being scored now is
    never part of the model it is scored with.
    """
    ii, tt = _candidate_rows(f, spec)
    pick = _sample(len(ii), max_rows, seed)
    return (ii, tt) if pick is None else (ii[pick], tt[pick])


def _candidate_rows(f: Features, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    upto = max(f.ready.shape[1] - spec.longest, 0)
    return np.nonzero(f.ready[:, :upto])


def _sample(n: int, max_rows: int, seed: int = 0) -> np.ndarray | None:
    """Indices of ``max_rows`` of ``n`` candidate rows (None: take them all)."""
    if n <= max_rows:
        return None
    return np.random.default_rng(seed).choice(n, max_rows, replace=False)


class _Clock:
    """Adds the wall time of each phase to ``timings`` (when given)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self.t
        self.t = now

    def share(self, spent: list[dict[str, float]]) -> None:
        """Add the wall time since the last lap to the phases of ``spent`` (one dict of
        seconds per phase for each piece of work done meanwhile), pro rata."""
        now = time.perf_counter()
        total: dict[str, float] = {}
        for own in spent:
            for phase, seconds in own.items():
                total[phase] = total.get(phase, 0.0) + seconds
        whole = sum(total.values())
        if self.timings is not None and whole > 0:
            for phase, seconds in total.items():
                self.timings[phase] = (
                    self.timings.get(phase, 0.0) + (now - self.t) * seconds / whole
                )
        self.t = now


@dataclass
class _Part:
    """What one chunk of series leaves for the rest of the cycle: its newest column."""

    last: Features
    strict: np.ndarray  # (m,) strict verdict before the forest's gate
    ungated: np.ndarray  # (m,) where it holds whatever the forest says (verdict.judge)
    relaxed: np.ndarray  # (m,)
    calibrated: np.ndarray  # (m,) strongest reason over the series' own level for it
    strict_evidence: list[Evidence]
    relaxed_evidence: list[Evidence]
    n_candidates: int  # candidate training rows
    candidates: np.ndarray | None  # the candidate training rows (when the forest is refitted)


def _newest(ev: Evidence) -> Evidence:
    def col(a: Any) -> Any:  # a copy: a view would keep the whole array alive
        return a[:, [-1]] if isinstance(a, np.ndarray) else a

    return Evidence(
        ev.reason,
        col(ev.fired),
        col(ev.window),
        col(ev.zscore),
        col(ev.delta),
        col(ev.threshold),
        col(ev.strength),
    )


def _detect_chunk(
    values: np.ndarray,
    past: np.ndarray | None,
    spec: FeatureSpec,
    th: Thresholds,
    direction: str,
    keep_candidates: bool,
    clock: _Clock,
    levels: dict[str, np.ndarray] | None = None,
    weekly: np.ndarray | None = None,
    floors: dict[str, np.ndarray] | None = None,
) -> _Part:
    feats = compute_features(values, spec, past, weekly)
    clock.lap("features")
    candidates = feats.matrix(direction, _candidate_rows(feats, spec))
    clock.lap("scoring")
    # The forest scores (and gates) only the newest column, and may be fitted on the
    # rows of every chunk: judge without it here, the gate is applied in detect_batch.
    j = judge(
        feats,
        th,
        direction,
        np.full(feats.ready.shape, np.nan),
        spec.longest,
        # the relaxed verdict looks back the shortest window, the "back in band" rule
        # its resolve points: the newest columns must hold both
        relaxed_columns=max(feats.short_points, th.resolve_points, 1),
        levels=levels,
        floors=floors,
    )
    part = _Part(
        last=feats.take(np.array([feats.ready.shape[1] - 1])),  # a copy, not a view
        strict=j.strict[:, -1],
        ungated=j.ungated[:, -1] if j.ungated is not None else np.zeros(len(values), bool),
        relaxed=j.relaxed[:, -1],
        calibrated=j.calibrated[:, -1] if j.calibrated is not None else np.zeros(len(values)),
        strict_evidence=[_newest(ev) for ev in j.strict_evidence],
        relaxed_evidence=[_newest(ev) for ev in j.relaxed_evidence],
        n_candidates=len(candidates),
        candidates=candidates if keep_candidates else None,
    )
    clock.lap("explanation")
    return part


def _concat_features(parts: list[Features]) -> Features:
    """Features of consecutive chunks of series as one (series along axis 0)."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {}
    for fld in fields(Features):
        vals = [getattr(p, fld.name) for p in parts]
        if fld.name in ("windows", "short_points"):
            out[fld.name] = vals[0]
        elif fld.name == "extra":  # a chunk without a key had none of it: zeros
            keys = {k for v in vals for k in v}
            out[fld.name] = {
                k: np.concatenate(
                    [v.get(k, np.zeros(p.ready.shape)) for v, p in zip(vals, parts, strict=True)]
                )
                for k in keys
            }
        elif isinstance(vals[0], dict):
            out[fld.name] = {k: np.concatenate([v[k] for v in vals]) for k in vals[0]}
        else:
            out[fld.name] = np.concatenate(vals)
    return Features(**out)


def _concat_evidence(parts: list[list[Evidence]]) -> list[Evidence]:
    def cat(a: list[Any]) -> Any:
        if a[0] is None or not isinstance(a[0], np.ndarray):
            return a[0]
        return np.concatenate(a)

    return [
        Evidence(*(cat([getattr(ev, f.name) for ev in evs]) for f in fields(Evidence)))
        for evs in zip(*parts, strict=True)
    ]


def detect_batch(
    batch: SeriesBatch,
    query: Query,
    settings: Settings,
    provider: ModelProvider,
    *,
    now: float,
    thresholds: Thresholds | None = None,
    active: set[tuple[tuple[str, str], ...]] | None = None,
    past: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
    threads: int = 1,
    weekly: np.ndarray | None = None,
    spec: FeatureSpec | None = None,
    feedback: Any = None,
) -> list[SeriesResult]:
    """Score and explain the newest point of every series in ``batch``.

    ``feedback`` (a ``detector.feedback.Feedback``): operators' verdicts, whose floors
    raise the thresholds of the series they concern.

    ``spec``: the query's feature spec when the caller computed it already (to fetch
    the seasonal slices of ``past`` with it); else it is computed here, once.

    ``past`` holds the seasonal history of the window (``detector.season``) when the
    query is seasonal and the window shorter than its periods; with ``weekly`` (each
    series' choice of the weekly profile, ``trained_weekly``), the weekly slices too.

    ``active`` holds the label keys (sorted label items) of series that were
    anomalous at the previous cycle: they stay anomalous until their reasons fall
    below the relaxed thresholds (``AIOPS_RESOLVE_RATIO``).

    Series are processed in chunks of ``CHUNK_SERIES`` (features and explainers of
    every time column, as the verdict needs the series' history), keeping only their
    newest column, ``threads`` chunks at a time (numpy works outside the GIL); the forest
    then scores all series at once. ``timings`` (if given) receives the wall time of the
    ``features``, ``scoring`` and ``explanation`` phases (with several threads, the
    chunks' wall time shared out in proportion of the time each thread spent per phase).
    """
    th = thresholds or Thresholds.from_settings(settings)
    if len(batch) == 0:
        return []
    clock = _Clock(timings)
    if spec is None:
        spec = feature_spec(query, settings, batch.step, weekly=weekly is not None)
    reusable = getattr(provider, "reusable", None)
    n_columns = len(feature_names(tuple(spec.window_points)))
    model = reusable(query.name, n_columns, now=now) if reusable else None
    spent: list[dict[str, float]] = []
    levels = _trained_levels(provider, query, batch)
    floors = (
        feedback.floors([series_key(query.name, lb) for lb in batch.labels], now)
        if feedback is not None and feedback.verdicts
        else {}
    )

    def chunk(s: int) -> _Part:
        own: dict[str, float] = {}
        spent.append(own)
        return _detect_chunk(
            batch.values[s : s + CHUNK_SERIES],
            None if past is None else past[:, s : s + CHUNK_SERIES],
            spec,
            th,
            query.direction,
            model is None,
            _Clock(own),
            None if levels is None else {r: v[s : s + CHUNK_SERIES] for r, v in levels.items()},
            None if weekly is None else weekly[s : s + CHUNK_SERIES],
            {r: v[s : s + CHUNK_SERIES] for r, v in floors.items()} or None,
        )

    starts = range(0, len(batch), CHUNK_SERIES)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            parts = list(pool.map(chunk, starts))
    else:
        parts = [chunk(s) for s in starts]
    clock.share(spent)
    last = _concat_features([p.last for p in parts])
    windows = last.windows

    # The forest: fitted on baseline rows sampled over all series (or reused). It is
    # fitted on their complete rows, or on all of them with undefined features neutral
    # when fewer than MIN_FIT_ROWS are complete (``scoring.fit_rows``).
    scores = np.full(len(batch), np.nan)
    versions = np.full(len(batch), "", dtype=object)
    fitted_at = np.full(len(batch), np.nan)
    n_candidates = sum(p.n_candidates for p in parts)
    pick = _sample(n_candidates, MAX_TRAIN_ROWS)
    if model is None and n_candidates >= MIN_FIT_ROWS:
        train = np.concatenate([p.candidates for p in parts])  # type: ignore[misc]
        model = provider.model_for(query.name, train if pick is None else train[pick], now=now)
    X = scoring_rows(last, query.direction)
    if model is not None:
        versions[:] = model.version
        fitted_at[:] = model.fitted_at
        scores = model.scorer.score(X)
    _score_trained(provider, query, batch, last, scores, versions, fitted_at)
    clock.lap("scoring")
    # A ready series without a score (its query has no forest: too few baseline rows
    # yet) is not judged: it is reported warming up, never anomalous.
    scored = np.isfinite(scores)

    # The verdict on the newest column: the forest's gate (as in ``judge``: a STRONG or
    # ungated reason passes without it), then hysteresis.
    gate = forest_gate(scores, th.score_thresh)
    strict = np.concatenate([p.strict for p in parts]) & gate
    strict |= np.concatenate([p.ungated for p in parts])
    relaxed = np.concatenate([p.relaxed for p in parts])
    newest = Judgement(
        strict[:, None],
        relaxed[:, None],
        _concat_evidence([p.strict_evidence for p in parts]),
        _concat_evidence([p.relaxed_evidence for p in parts]),
        np.zeros((len(batch), 1)),
    )
    if active:
        was_active = np.array([label_key(lb) in active for lb in batch.labels])
    else:
        was_active = np.zeros(len(batch), dtype=bool)
    verdict = hysteresis(newest.strict, newest.relaxed, was_active) & scored[:, None]
    anomalous = verdict[:, 0].tolist()
    calibrated = np.concatenate([p.calibrated for p in parts])
    score_l = calibrated_score(calibrated, verdict[:, 0]).tolist()
    forest_l = scores.tolist()
    evidence = reasons_behind(newest, verdict)

    # the newest finite value of each series (the grid's last point may be a gap)
    values = batch.values
    finite_v = np.isfinite(values)
    last_idx = values.shape[1] - 1 - np.argmax(finite_v[:, ::-1], axis=1)
    latest = values[np.arange(len(batch)), last_idx].tolist()
    shortest = spec.window_points[windows[0]]
    alive = np.nonzero(finite_v[:, -shortest:].any(axis=1))[0].tolist()

    # Python objects for the exporter, the events and the CLI: from plain lists
    ready = (last.ready[:, 0] & scored).tolist()
    baseline = last.baseline[:, 0].tolist()
    zs = {w: last.z[w][:, 0].tolist() for w in windows}
    delta = last.delta[windows[0]][:, 0].tolist()
    scale = last.scale[:, 0].tolist()
    version_l = [str(v) for v in versions]
    fitted_l = fitted_at.tolist()
    names = last.names()
    rows = X.tolist()
    results: list[SeriesResult] = []
    for i in alive:
        if not ready[i]:
            results.append(
                SeriesResult(
                    query.name,
                    batch.labels[i],
                    "warming_up",
                    value=latest[i],
                    observed_at=batch.end,
                )
            )
            continue
        results.append(
            SeriesResult(
                metric=query.name,
                labels=batch.labels[i],
                status="ok",
                value=latest[i],
                baseline=baseline[i],
                score=score_l[i],
                forest_score=forest_l[i],
                anomalous=anomalous[i],
                reasons=reasons_at(evidence, windows, i, 0) if anomalous[i] else [],
                zscores={w: zs[w][i] for w in windows},
                delta=delta[i],
                model_version=version_l[i],
                observed_at=batch.end,
                model_fitted_at=fitted_l[i] if math.isfinite(fitted_l[i]) else None,
                scale=scale[i],
                features=dict(zip(names, rows[i], strict=True)),
            )
        )
    clock.lap("explanation")
    return results


def trained_weekly(provider: Any, query: Query, batch: SeriesBatch) -> np.ndarray | None:
    """Each series' choice of the weekly profile, as the nightly retrain made it from a
    long history and stored with the model (``True``: weekly), or None when no series of
    the query took it (the live window is then daily only, and no weekly slice is
    fetched)."""
    known = getattr(provider, "weekly", None)
    table = known(query.name) if known else {}
    if not any(table.values()):
        return None
    return np.array([bool(table.get(series_key(query.name, lb))) for lb in batch.labels])


def _trained_levels(
    provider: ModelProvider, query: Query, batch: SeriesBatch
) -> dict[str, np.ndarray] | None:
    """Reason → each series' own level from its promoted trained model (NaN: none), or
    None when no series of the query has one. The live lookback (6 h) is too short for
    the series' own tail (``detector.verdict.own_levels``): the nightly retrain learns the
    levels from the training history and stores them with the model."""
    known = getattr(provider, "levels", None)
    table = known(query.name) if known else {}
    if not table:
        return None
    keys = [series_key(query.name, lb) for lb in batch.labels]
    reasons = sorted({r for per in table.values() for r in per})
    return {
        r: np.array([table.get(k, {}).get(r, np.nan) for k in keys], dtype=np.float64)
        for r in reasons
    }


def _score_trained(
    provider: ModelProvider,
    query: Query,
    batch: SeriesBatch,
    last: Features,
    scores: np.ndarray,
    versions: np.ndarray,
    fitted_at: np.ndarray,
) -> None:
    """Rescore, in place, the series that have a promoted trained model."""
    trained = getattr(provider, "trained", None)
    groups = trained(query.name) if trained else []
    if not groups:
        return
    keys = [series_key(query.name, lb) for lb in batch.labels]
    base = last.names()
    for g in groups:
        rows = [i for i, k in enumerate(keys) if k in g.index]
        if not rows or g.feature_names[: len(base)] != base:
            continue  # trained at another step/window set: the baseline model scores these
        calendar = g.feature_names[len(base) :]
        rows_a = np.asarray(rows)
        X = scoring_rows(
            last,
            query.direction,
            (rows_a, np.zeros_like(rows_a)),
            times=np.array([batch.end]),
            calendar=calendar,
        )
        which = np.array([g.index[keys[i]] for i in rows])
        scores[rows_a] = g.pack.score(X, which)
        versions[rows_a] = [g.versions[w] for w in which]
        fitted_at[rows_a] = [g.fitted_at[w] for w in which]
