"""Streaming backtests: the live detector replayed over history, row by row.

``replay`` runs the same feature function, IsolationForest scorer, explainers,
thresholds and hysteresis as the live cycle over a (series × time) array, in
streaming order: the verdict on column ``t`` uses columns ``0..t`` only.

- Features are causal by construction (prefix sums over the past).
- The forest is refitted every ``refit_every`` columns on feature rows that end
  one longest window before the refit point, and scores the columns up to the
  next refit: what a detector running since the start would have used.
- Hysteresis is the live rule: a series that was anomalous at ``t - 1`` stays
  anomalous at ``t`` while its reasons fire at the relaxed thresholds.

Vectorised over series and time except for the hysteresis recurrence, which is
a cheap loop over time on boolean arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.explain import Evidence, any_fired, evaluate, novelty, surprise
from detector.features import Features, FeatureSpec, compute_features
from detector.pipeline import Thresholds
from detector.scoring import IsolationForestScorer


@dataclass
class Replay:
    """Per (series, time) verdicts of a streaming replay; arrays of shape (n_series, n_times)."""

    features: Features
    score: np.ndarray  # IsolationForest score, 0..1 (NaN before the first fit)
    anomalous: np.ndarray  # bool, the live verdict
    onset: np.ndarray  # bool, first column of each anomalous episode
    evidence: list[Evidence]  # reasons behind the verdict (strict, or relaxed while held)

    @property
    def windows(self) -> tuple[str, ...]:
        return self.features.windows

    def reasons(self, i: int, t: int) -> list[str]:
        return [ev.reason for ev in self.evidence if ev.fired[i, t]]


def streaming_scores(
    f: Features,
    spec: FeatureSpec,
    direction: str,
    *,
    refit_every: int = 500,
    max_train_rows: int = 20000,
    random_state: int = 0,
) -> np.ndarray:
    """IsolationForest scores of every (series, time), each from a forest fitted on the past."""
    n, T = f.ready.shape
    scores = np.full((n, T), np.nan)
    lag = spec.longest  # training rows end a longest window before the refit point
    first = spec.warmup_points + lag + 8
    for start in range(first, T, refit_every):
        stop = min(start + refit_every, T)
        upto = start - lag
        ii, tt = np.nonzero(f.ready[:, :upto])
        if len(ii) < 8:
            continue
        if len(ii) > max_train_rows:  # the most recent rows
            keep = np.argsort(tt, kind="stable")[-max_train_rows:]
            ii, tt = ii[keep], tt[keep]
        X = f.matrix(direction, (ii, tt))
        X = X[np.isfinite(X).all(axis=1)]
        if len(X) < 8:
            continue
        scorer = IsolationForestScorer(random_state=random_state).fit(X)
        cols = np.arange(start, stop)
        si, st = np.meshgrid(np.arange(n), cols, indexing="ij")
        scores[:, start:stop] = scorer.score(f.matrix(direction, (si.ravel(), st.ravel()))).reshape(
            n, len(cols)
        )
    return scores


def hysteresis(strict: np.ndarray, relaxed: np.ndarray) -> np.ndarray:
    """anomalous[t] = strict[t] or (anomalous[t-1] and relaxed[t]), per series."""
    out = np.zeros_like(strict)
    prev = np.zeros(strict.shape[0], dtype=bool)
    for t in range(strict.shape[1]):
        prev = strict[:, t] | (prev & relaxed[:, t])
        out[:, t] = prev
    return out


def replay(
    values: np.ndarray,
    spec: FeatureSpec,
    thresholds: Thresholds,
    direction: str = "both",
    *,
    refit_every: int = 500,
) -> Replay:
    """Replay the live detector over ``values`` (n_series × n_times) in streaming order."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    f = compute_features(x, spec)
    scores = streaming_scores(f, spec, direction, refit_every=refit_every)
    strict_ev = evaluate(thresholds.explainers(direction), f)
    if thresholds.surprise > 0:
        for ev in strict_ev:
            ev.fired = ev.fired & (surprise(ev.strength, thresholds.history) >= thresholds.surprise)
    if thresholds.novelty > 0:
        gap = spec.longest
        for ev in strict_ev:
            nov = novelty(ev.strength, thresholds.history, gap)
            ev.fired = ev.fired & (nov >= thresholds.novelty)
    relaxed_ev = evaluate(thresholds.relaxed().explainers(direction), f)
    gate = np.where(np.isfinite(scores), scores >= thresholds.score_thresh, True)
    strict = f.ready & any_fired(strict_ev) & gate
    relaxed = f.ready & any_fired(relaxed_ev)
    anomalous = hysteresis(strict, relaxed)
    held = anomalous & ~strict
    for s_ev, r_ev in zip(strict_ev, relaxed_ev, strict=True):
        s_ev.fired = np.where(held, r_ev.fired, s_ev.fired & strict)
        s_ev.zscore = np.where(held, r_ev.zscore, s_ev.zscore)
        s_ev.delta = np.where(held, r_ev.delta, s_ev.delta)
        s_ev.window = np.where(held, r_ev.window, s_ev.window)
    onset = anomalous.copy()
    onset[:, 1:] &= ~anomalous[:, :-1]
    return Replay(f, scores, anomalous, onset, strict_ev)
