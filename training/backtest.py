"""Streaming backtests: the live detector replayed over history, row by row.

``replay`` runs the same feature function, IsolationForest scorer, explainers,
thresholds and hysteresis as the live cycle over a (series × time) array, in
streaming order: the verdict on column ``t`` uses columns ``0..t`` only.

- Features are causal by construction (prefix sums over the past).
- The forest is refitted every ``refit_every`` columns on feature rows that end
  one longest window before the refit point, and scores the columns up to the
  next refit: what a detector running since the start would have used. The first
  forest comes at the first column with enough ready rows behind it, as live. Fitted and
  scored rows go through ``detector.scoring.fit_rows`` / ``scoring_rows`` as live:
  an undefined feature of a ready row is neutral (0).
- Hysteresis is the live rule: a series that was anomalous at ``t - 1`` stays
  anomalous at ``t`` while its reasons fire at the relaxed thresholds. Columns
  before the first forest have no score and no verdict, as live.

Vectorised over series and time except for the hysteresis recurrence, which is
a cheap loop over time on boolean arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.explain import PASSIVE_REASONS, Evidence
from detector.features import Features, FeatureSpec, compute_features
from detector.scoring import MIN_FIT_ROWS, IsolationForestScorer, scoring_rows
from detector.verdict import (
    Judgement,
    Thresholds,
    calibrated_score,
    hysteresis,
    judge,
    reasons_behind,
)


@dataclass
class Replay:
    """Per (series, time) verdicts of a streaming replay; arrays of shape (n_series, n_times)."""

    features: Features
    score: np.ndarray  # IsolationForest score, 0..1 (NaN before the first fit)
    anomalous: np.ndarray  # bool, the live verdict
    onset: np.ndarray  # bool, first column of each anomalous episode
    evidence: list[Evidence]  # reasons behind the verdict (strict, or relaxed while held)
    weight: np.ndarray  # novelty of the strongest strict reason (0 where none)
    #: where an active reason (not a passive one such as spike) starts or escalates an
    #: anomaly: it fires at the strict thresholds and the strict verdict holds
    active: np.ndarray | None = None
    #: the calibrated score (``aiops_anomaly_score``): >= 1 exactly where anomalous (NaN
    #: before the first fit, as ``score``)
    calibrated: np.ndarray | None = None

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
    # ready rows before each column: until a first forest exists, one is tried at every
    # column that has enough of them (as live, where a query gets its forest at the
    # first cycle with enough baseline rows), then refitted every ``refit_every``
    ready_before = np.concatenate([[0], np.cumsum(f.ready.sum(axis=0))])
    start = first
    while start < T:
        upto = start - lag
        if ready_before[max(upto, 0)] < MIN_FIT_ROWS:
            start += 1
            continue
        ii, tt = np.nonzero(f.ready[:, :upto])
        if len(ii) > max_train_rows:  # the most recent rows
            keep = np.argsort(tt, kind="stable")[-max_train_rows:]
            ii, tt = ii[keep], tt[keep]
        stop = min(start + refit_every, T)
        scorer = IsolationForestScorer(random_state=random_state).fit(f.matrix(direction, (ii, tt)))
        cols = np.arange(start, stop)
        si, st = np.meshgrid(np.arange(n), cols, indexing="ij")
        X = scoring_rows(f, direction, (si.ravel(), st.ravel()))
        scores[:, start:stop] = scorer.score(X).reshape(n, len(cols))
        start = stop
    return scores


def replay(
    values: np.ndarray,
    spec: FeatureSpec,
    thresholds: Thresholds,
    direction: str = "both",
    *,
    refit_every: int = 500,
    floors: dict[str, np.ndarray] | None = None,
) -> Replay:
    """Replay the live detector over ``values`` (n_series × n_times) in streaming order.

    ``floors``: operators' feedback in force at each column (reason → series × time
    floors, ``detector.feedback.floor_columns``), as the live cycle applies it."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    f = compute_features(x, spec)
    scores = streaming_scores(f, spec, direction, refit_every=refit_every)
    j = judge(f, thresholds, direction, scores, spec.longest, floors=floors)
    # as live: where no forest could be fitted yet there is no score, and no verdict
    # (the live detector reports such a series warming up, never anomalous)
    scored = np.isfinite(scores)
    j.strict &= scored
    j.relaxed &= scored
    anomalous = hysteresis(j.strict, j.relaxed)
    onset = anomalous.copy()
    onset[:, 1:] &= ~anomalous[:, :-1]
    assert j.calibrated is not None
    calibrated = np.where(scored, calibrated_score(j.calibrated, anomalous), np.nan)
    return Replay(
        f,
        scores,
        anomalous,
        onset,
        reasons_behind(j, anomalous),
        j.weight,
        active_strict(j),
        calibrated,
    )


def active_strict(j: Judgement) -> np.ndarray:
    """Where the strict verdict holds with an active reason (one the webhook acts on)."""
    act = np.zeros(j.strict.shape, dtype=bool)
    for ev in j.strict_evidence:
        if ev.reason not in PASSIVE_REASONS:
            act |= ev.fired
    return act & j.strict
