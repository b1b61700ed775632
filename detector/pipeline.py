"""Detection of one query's batch: features → IsolationForest score → explainers → results.

Everything is computed for all series of the batch at once; Python objects are
built only for the results handed to the exporter and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.catalogue import Query
from detector.explain import Evidence, Explainer, Reason, default_explainers, reasons_at
from detector.features import Features, FeatureSpec, compute_features
from detector.scoring import ModelProvider
from detector.settings import Settings
from detector.source import SeriesBatch, series_key
from detector.verdict import hysteresis, judge, reasons_behind


@dataclass
class Thresholds:
    z_thresh: float = 3.0
    vol_mult: float = 2.0
    pct_thresh: float = 0.3
    score_thresh: float = 0.5
    resolve_ratio: float = 0.75
    novelty: float = 1.0  # a reason counts only this many times stronger than its recent max
    history: int = 400  # points of each reason's strength history behind the novelty
    #: a change of level back to within this share of z_thresh of the older half of the
    #: baseline is a return to normal, not an onset (see detector.verdict)
    return_ratio: float = 0.5

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(s.z_thresh, s.vol_mult, s.pct_thresh, s.score_thresh, s.resolve_ratio, s.novelty)

    def relaxed(self) -> Thresholds:
        """Thresholds an ongoing anomaly must fall below to end (hysteresis against flapping)."""
        r = self.resolve_ratio
        return Thresholds(
            z_thresh=self.z_thresh * r,
            vol_mult=1 + (self.vol_mult - 1) * r,
            pct_thresh=self.pct_thresh * r,
            score_thresh=0.0,
            resolve_ratio=r,
            novelty=0.0,
            history=self.history,
        )

    def explainers(self, direction: str) -> list[Explainer]:
        return default_explainers(
            z_thresh=self.z_thresh,
            vol_mult=self.vol_mult,
            pct_thresh=self.pct_thresh,
            direction=direction,
        )


@dataclass
class SeriesResult:
    """The verdict on one series at the newest grid point."""

    metric: str
    labels: dict[str, str]
    status: str  # "ok" or "warming_up"
    value: float = float("nan")
    baseline: float = float("nan")
    score: float = float("nan")
    anomalous: bool = False
    reasons: list[Reason] = field(default_factory=list)
    zscores: dict[str, float] = field(default_factory=dict)
    delta: float = float("nan")
    model_version: str = ""
    observed_at: float = 0.0
    started_at: float | None = None
    model_fitted_at: float | None = None
    scale: float = float("nan")
    features: dict[str, float] = field(default_factory=dict)  # the scored row, by name

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if v is None or not np.isfinite(v) else round(float(v), 6)

        return {
            "metric": self.metric,
            "labels": self.labels,
            "status": self.status,
            "value": num(self.value),
            "baseline": num(self.baseline),
            "score": num(self.score),
            "anomalous": self.anomalous,
            "reasons": [r.as_dict() for r in self.reasons],
            "zscores": {k: num(v) for k, v in self.zscores.items()},
            "delta": num(self.delta),
            "model_version": self.model_version,
            "observed_at": self.observed_at,
            "started_at": self.started_at,
        }


def feature_spec(query: Query, settings: Settings, step: float) -> FeatureSpec:
    """The feature configuration of a query: its windows (``windows:``, default 5m/15m/1h)
    and a baseline that is the lookback before the longest window."""
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
    )


def training_rows(
    f: Features, spec: FeatureSpec, *, max_rows: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(series, time) pairs of the baseline part that may train the forest.

    The newest ``longest window`` is left out so the incident being scored now is
    never part of the model it is scored with.
    """
    n_times = f.ready.shape[1]
    upto = max(n_times - spec.longest, 0)
    mask = f.ready[:, :upto]
    ii, tt = np.nonzero(mask)
    if len(ii) > max_rows:
        pick = np.random.default_rng(seed).choice(len(ii), max_rows, replace=False)
        ii, tt = ii[pick], tt[pick]
    return ii, tt


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
) -> list[SeriesResult]:
    """Score and explain the newest point of every series in ``batch``.

    ``past`` holds the seasonal history of the window (``detector.season``) when the
    query is seasonal and the window shorter than its periods.

    ``active`` holds the label keys (sorted label items) of series that were
    anomalous at the previous cycle: they stay anomalous until their reasons fall
    below the relaxed thresholds (``AIOPS_RESOLVE_RATIO``).
    """
    th = thresholds or Thresholds.from_settings(settings)
    if len(batch) == 0:
        return []
    spec = feature_spec(query, settings, batch.step)
    feats = compute_features(batch.values, spec, past)
    last = feats.take(slice(-1, None))
    shortest = spec.window_points[feats.windows[0]]
    alive = np.isfinite(batch.values[:, -shortest:]).any(axis=1)

    scores = np.full(len(batch), np.nan)
    versions = np.full(len(batch), "", dtype=object)
    fitted_at = np.full(len(batch), np.nan)
    ii, tt = training_rows(feats, spec)
    train = feats.matrix(query.direction, (ii, tt))
    train = train[np.isfinite(train).all(axis=1)]
    if len(train) >= 8:
        model = provider.model_for(query.name, train, now=now)
        versions[:] = model.version
        fitted_at[:] = model.fitted_at
        scores = model.scorer.score(last.matrix(query.direction))
    _score_trained(provider, query, batch, last, scores, versions, fitted_at)

    # Verdicts need every column (novelty compares with the series' own history);
    # the forest scores only the newest one.
    all_scores = np.full(feats.ready.shape, np.nan)
    all_scores[:, -1] = scores
    j = judge(feats, th, query.direction, all_scores, spec.longest)
    ready = last.ready[:, 0]
    was_active = np.array([tuple(sorted(lb.items())) in (active or ()) for lb in batch.labels])
    verdict = hysteresis(j.strict[:, -1:], j.relaxed[:, -1:], was_active)
    anomalous = verdict[:, 0]
    evidence = [
        Evidence(
            ev.reason,
            ev.fired[:, -1:],
            ev.window[:, -1:],
            ev.zscore[:, -1:],
            ev.delta[:, -1:],
            ev.threshold[:, -1:],
            None,
        )
        for ev in reasons_behind(j, np.pad(verdict, ((0, 0), (j.strict.shape[1] - 1, 0))))
    ]

    # the newest finite value of each series (the grid's last point may be a gap)
    finite = np.isfinite(batch.values)
    last_idx = batch.values.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
    latest = batch.values[np.arange(len(batch)), last_idx]

    results: list[SeriesResult] = []
    short = feats.windows[0]
    names = last.names()
    rows = last.matrix(query.direction)
    for i in np.nonzero(alive)[0]:
        if not ready[i]:
            results.append(
                SeriesResult(
                    query.name,
                    batch.labels[i],
                    "warming_up",
                    value=float(latest[i]),
                    observed_at=batch.end,
                )
            )
            continue
        results.append(
            SeriesResult(
                metric=query.name,
                labels=batch.labels[i],
                status="ok",
                value=float(latest[i]),
                baseline=float(last.baseline[i, 0]),
                score=float(scores[i]),
                anomalous=bool(anomalous[i]),
                reasons=reasons_at(evidence, feats.windows, i, 0) if anomalous[i] else [],
                zscores={w: float(last.z[w][i, 0]) for w in feats.windows},
                delta=float(last.delta[short][i, 0]),
                model_version=str(versions[i]),
                observed_at=batch.end,
                model_fitted_at=float(fitted_at[i]) if np.isfinite(fitted_at[i]) else None,
                scale=float(last.scale[i, 0]),
                features=dict(zip(names, rows[i].tolist(), strict=True)),
            )
        )
    return results


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
        X = last.design(
            query.direction, np.array([batch.end]), calendar, (rows_a, np.zeros_like(rows_a))
        )
        which = np.array([g.index[keys[i]] for i in rows])
        scores[rows_a] = g.pack.score(X, which)
        versions[rows_a] = [g.versions[w] for w in which]
        fitted_at[rows_a] = [g.fitted_at[w] for w in which]
