"""The retrain job: history → features → one IsolationForest per series → evaluate → promote.

For every catalogue query (or the series picked with ``--series``):

1. pull ``AIOPS_TRAIN_HISTORY`` (default 14 days) from Prometheus at the query's
   step, in range queries of at most 11,000 points each (``fetch_range``);
2. compute features with THE feature function, exactly as the live detector does
   (same spec, same baseline), and store them in ``aiops_features``;
3. split each series in time: the newest ``AIOPS_TRAIN_TAIL`` share is held back;
   the model is fitted on the ready points before it (one longest window of gap,
   so no tail incident leaks into training). Queries that ask for seasonality
   (``seasonality: daily|weekly``) add hour-of-day / day-of-week columns;
4. fit one IsolationForest per series with the query's ``contamination``: through
   joblib on this machine, or on a Dask cluster when ``AIOPS_DASK_ADDRESS`` is set.
   The seed is derived from the series key, so every run (local or Dask) fits the
   same model from the same data;
5. score the tail. The candidate is promoted only if its anomaly rate on the tail
   is within bounds (at most ``TAIL_RATE_FACTOR`` × contamination) and not worse
   than the currently promoted version's rate on the same tail, and if, on the
   anomalies of the tail operators gave a verdict on (``aiops_feedback``), its forest
   lets through no more confirmed false alarms and no fewer confirmed incidents than
   the promoted version's (at ``AIOPS_SCORE_THRESH``, the live gate); the evaluation
   says how many of each it would have caught.

One run at a time: a lease in the database (``aiops_locks``) makes a second
``aiops train`` stop with a message naming the holder (or wait, with ``--wait``).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sqlalchemy import Engine, func, select

from aiops.core.errors import AiopsError
from aiops.core.series import series_key
from aiops.core.settings import Settings
from detector.catalogue import Query
from detector.features import CALENDAR_FEATURES, Features, compute_features
from detector.pipeline import feature_spec
from detector.scoring import fit_rows, scoring_rows
from detector.source import SeriesBatch
from detector.verdict import Thresholds, latest_levels
from feature_store import tables
from feature_store.locks import Lease
from feature_store.registry import ModelLoadError, ModelRegistry, dump_model
from feature_store.store import FeatureStore

log = logging.getLogger("aiops.train")

#: A candidate may flag at most this many times its contamination on the tail.
TAIL_RATE_FACTOR = 5.0
#: ... and at most this much more than the promoted version on the same tail.
TAIL_RATE_SLACK = 0.005
MIN_TRAIN_ROWS = 500
MIN_TAIL_ROWS = 60
MAX_TRAIN_ROWS = 10000
N_ESTIMATORS = 100
MAX_SAMPLES = 256
#: feature cells computed at once (series × points): bounds the memory of a run
CHUNK_CELLS = 1_000_000


class TrainError(AiopsError):
    pass


@dataclass
class SeriesData:
    """One series' training material, small enough to ship to a worker."""

    key: str
    metric: str
    labels: dict[str, str]
    X_train: np.ndarray
    X_tail: np.ndarray
    feature_names: list[str]
    params: dict[str, Any]
    train_start: float
    train_end: float
    #: reason -> the series' own level after its history (detector.verdict.latest_levels;
    #: only where the history is long enough), stored in the evaluation for the live detector
    levels: dict[str, float] = field(default_factory=dict)
    #: the weekly profile explained the end of its history better than the daily one
    #: (detector.features.weekly_choice), stored for the live detector
    weekly: bool = False
    #: operators' verdicts on anomalies that began in the tail: verdict -> the feature
    #: rows (scored as live) at their onsets (the promotion gate, ``decide``)
    verdict_rows: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Outcome:
    """What became of one series in this run (a row of the summary table)."""

    series: str
    metric: str
    samples: int = 0
    tail_rows: int = 0
    tail_rate: float | None = None
    promoted_rate: float | None = None
    decision: str = "skipped"  # promoted | candidate | rejected | skipped | failed
    reason: str = ""
    version: int | None = None


@dataclass
class TrainReport:
    started: float
    duration: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    feature_rows: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: fetch, features, fit, ...

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def count(self, decision: str) -> int:
        return sum(o.decision == decision for o in self.outcomes)


def seed_for(key: str) -> int:
    """A stable per-series seed: the same model from the same data, on any worker."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def calendar_for(query: Query) -> tuple[str, ...]:
    return CALENDAR_FEATURES.get(query.seasonality or "", ())


def stored_until(store: FeatureStore, metric: str) -> dict[str, float]:
    """The newest stored feature time of every series of ``metric``."""
    t = tables.features
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.series, func.max(t.c.ts)).where(t.c.metric == metric).group_by(t.c.series)
        )
        return {series: float(ts) for series, ts in rows}


def prepare(
    batch: SeriesBatch,
    query: Query,
    settings: Settings,
    *,
    tail: float,
    only: set[str] | None = None,
    store: FeatureStore | None = None,
) -> tuple[list[SeriesData], list[Outcome], int]:
    """Training material for every series of ``batch`` (features computed in chunks).

    Returns the material, outcomes for series that cannot be trained, and the
    number of feature rows stored.
    """
    spec = feature_spec(query, settings, batch.step, weekly=True)
    calendar = calendar_for(query)
    times = batch.timestamps
    n_times = batch.values.shape[1]
    tail_start = int(n_times * (1 - tail))
    train_end_col = max(tail_start - spec.longest, 0)
    keys = [series_key(query.name, lb) for lb in batch.labels]
    wanted = [i for i, k in enumerate(keys) if only is None or k in only or query.name in only]
    per_chunk = max(1, CHUNK_CELLS // max(n_times, 1))
    out: list[SeriesData] = []
    skipped: list[Outcome] = []
    stored = 0
    latest = stored_until(store, query.name) if store is not None else {}
    verdicts = _verdicts(store, query.name) if store is not None else {}
    keep_from = float(times[-1]) - settings.feature_retention_seconds
    for c in range(0, len(wanted), per_chunk):
        rows = wanted[c : c + per_chunk]
        feats = compute_features(batch.values[rows], spec)
        levels = latest_levels(feats, Thresholds.from_settings(settings), query.direction)
        weekly = feats.extra.get("weekly")
        if store is not None:
            # only rows newer than what an earlier run stored: a nightly run adds a day
            since = np.array([max(latest.get(keys[i], -np.inf), keep_from) for i in rows])
            mask = times[None, :] > since[:, None]
            labels = [batch.labels[i] for i in rows]
            stored += store.write_features(query.name, labels, times, feats, query.direction, mask)
        for j, i in enumerate(rows):
            data = _series_data(
                feats,
                j,
                query,
                keys[i],
                batch.labels[i],
                times,
                calendar,
                train_end_col,
                tail_start,
            )
            if isinstance(data, Outcome):
                skipped.append(data)
            else:
                data.params["score_thresh"] = settings.score_thresh
                data.verdict_rows = _verdict_rows(
                    feats, j, query, times, calendar, tail_start, verdicts.get(keys[i], [])
                )
                data.levels = {r: float(v[j]) for r, v in levels.items() if np.isfinite(v[j])}
                data.weekly = bool(weekly[j, -1]) if weekly is not None else False
                out.append(data)
    return out, skipped, stored


def _verdicts(store: FeatureStore, metric: str) -> dict[str, list[tuple[float, str]]]:
    """Operators' verdicts on the query's anomalies: series -> [(onset, verdict)]."""
    out: dict[str, list[tuple[float, str]]] = {}
    try:
        rows = store.feedback(metric=metric, limit=1_000_000)
    except Exception as exc:  # no feedback table yet, or the database hiccups: no gate
        log.warning("cannot read feedback for the promotion gate: %s", exc)
        return out
    for r in rows:
        out.setdefault(r["series"], []).append((float(r["started_at"]), r["verdict"]))
    return out


def _verdict_rows(
    feats: Features,
    j: int,
    query: Query,
    times: np.ndarray,
    calendar: tuple[str, ...],
    tail_start: int,
    verdicts: list[tuple[float, str]],
) -> dict[str, np.ndarray]:
    """The tail's feature rows at the onsets of the anomalies given a verdict."""
    cols: dict[str, list[int]] = {}
    for at, verdict in verdicts:
        col = int(np.searchsorted(times, at))
        if tail_start <= col < len(times) and feats.ready[j, col]:
            cols.setdefault(verdict, []).append(col)
    out = {}
    for verdict, cs in cols.items():
        at_cols = (np.full(len(cs), j), np.array(sorted(set(cs))))
        X = scoring_rows(feats, query.direction, at_cols, times=times, calendar=calendar)
        out[verdict] = X[np.isfinite(X).all(axis=1)]
    return out


def _verdicts_flagged(
    scores_of: Callable[[np.ndarray], np.ndarray], data: SeriesData
) -> dict[str, dict[str, int]]:
    """Per verdict: the rows, and how many a forest's gate lets through."""
    thr = data.params.get("score_thresh", 0.0)
    return {
        verdict: {"rows": len(X), "flagged": int((scores_of(X) >= thr).sum()) if len(X) else 0}
        for verdict, X in sorted(data.verdict_rows.items())
    }


def _series_data(
    feats: Features,
    j: int,
    query: Query,
    key: str,
    labels: dict[str, str],
    times: np.ndarray,
    calendar: tuple[str, ...],
    train_end_col: int,
    tail_start: int,
) -> SeriesData | Outcome:
    usable = feats.ready[j] & feats.mature[j]
    train_cols = np.nonzero(usable[:train_end_col])[0]
    tail_cols = tail_start + np.nonzero(usable[tail_start:])[0]
    if len(train_cols) < MIN_TRAIN_ROWS:
        return Outcome(
            key,
            query.name,
            samples=len(train_cols),
            reason=(
                f"too little history: {len(train_cols)} usable points before the tail,"
                f" need {MIN_TRAIN_ROWS}"
            ),
        )
    if len(tail_cols) < MIN_TAIL_ROWS:
        return Outcome(
            key,
            query.name,
            samples=len(train_cols),
            reason=f"too short a tail to evaluate: {len(tail_cols)} points, need {MIN_TAIL_ROWS}",
        )
    rng = np.random.default_rng(seed_for(key))
    if len(train_cols) > MAX_TRAIN_ROWS:
        train_cols = np.sort(rng.choice(train_cols, MAX_TRAIN_ROWS, replace=False))

    def at(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(cols), j), cols

    # fitted as the live baseline forest is (``fit_rows``: the complete rows, or all of
    # them with undefined features neutral when too few are complete); the tail scored
    # as the live detector scores it (``scoring_rows``)
    X_train = fit_rows(feats.design(query.direction, times, calendar, at(train_cols)))
    X_tail = scoring_rows(feats, query.direction, at(tail_cols), times=times, calendar=calendar)
    X_tail = X_tail[np.isfinite(X_tail).all(axis=1)]
    params = {
        "n_estimators": N_ESTIMATORS,
        "max_samples": MAX_SAMPLES,
        "contamination": query.contamination,
        "random_state": seed_for(key),
        "seasonality": query.seasonality or "none",
    }
    return SeriesData(
        key=key,
        metric=query.name,
        labels=labels,
        X_train=X_train,
        X_tail=X_tail,
        feature_names=list(feats.names(calendar)),
        params=params,
        train_start=float(times[train_cols[0]]),
        train_end=float(times[train_cols[-1]]),
    )


def fit_one(data: SeriesData) -> tuple[dict[str, Any], bytes]:
    """Fit, evaluate and serialise (skops) one series; runs in a joblib or Dask worker.

    Only the evaluation and the compressed artifact travel back: a thousand fitted
    forests held in memory at once would cost gigabytes.
    """
    t0 = time.perf_counter()
    p = data.params
    model = IsolationForest(
        n_estimators=p["n_estimators"],
        max_samples=min(p["max_samples"], len(data.X_train)),
        contamination=p["contamination"],
        random_state=p["random_state"],
    ).fit(data.X_train)
    threshold = -float(model.offset_)
    tail_scores = -model.score_samples(data.X_tail)
    evaluation = {
        "train_rows": len(data.X_train),
        "tail_rows": len(data.X_tail),
        "threshold": threshold,
        "tail_anomaly_rate": float(np.mean(tail_scores > threshold)),
        "tail_mean_score": float(np.mean(tail_scores)),
        "tail_p99_score": float(np.quantile(tail_scores, 0.99)),
        "fit_seconds": round(time.perf_counter() - t0, 4),
        # the series' own level for each reason (detector.verdict.latest_levels; the
        # spike's in band sds, the others' times their threshold), none: too short a history
        "levels": {r: round(v, 4) for r, v in sorted(data.levels.items())},
        # the weekly profile, not the daily one, explains the series (seasonality: auto)
        "weekly": data.weekly,
        # operators' verdicts on the tail's anomalies: how many the forest lets through
        "feedback": _verdicts_flagged(lambda X: -model.score_samples(X), data),
    }
    return evaluation, dump_model(model)


@contextmanager
def _backend(dask_address: str | None) -> Iterator[None]:
    if not dask_address:
        yield
        return
    from distributed import Client
    from joblib import parallel_config

    with Client(dask_address, timeout=30) as client:
        log.info(
            "training on Dask scheduler=%s workers=%d",
            dask_address,
            len(client.scheduler_info().get("workers", {})),
        )
        with parallel_config(backend="dask"):
            yield


def fit_all(
    items: list[SeriesData],
    *,
    jobs: int = -1,
    dask_address: str | None = None,
) -> Iterator[tuple[int, tuple[dict[str, Any], bytes] | BaseException]]:
    """``fit_one`` over ``items`` through joblib (local processes or Dask), yielding
    ``(index, result)`` as results arrive so each is registered and dropped at once."""
    from joblib import Parallel, delayed

    if not items:
        return
    with _backend(dask_address):
        n_jobs = jobs if not dask_address else -1
        if n_jobs == 1 and not dask_address:
            gen: Any = ((i, _safe_fit(d)) for i, d in enumerate(items))
        else:
            gen = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size="auto")(
                delayed(_indexed_fit)(i, d) for i, d in enumerate(items)
            )
        yield from gen


def _indexed_fit(i: int, data: SeriesData) -> tuple[int, Any]:
    return i, _safe_fit(data)


def _safe_fit(data: SeriesData) -> tuple[dict[str, Any], bytes] | BaseException:
    try:
        return fit_one(data)
    except Exception as exc:  # one bad series must not sink the run
        return exc


def _verdict_words(evaluation: dict[str, Any]) -> str:
    """``; confirmed incidents let through 3/3, confirmed false alarms 0/2`` (or '')."""
    fb = evaluation.get("feedback") or {}
    parts = [
        f"{label} let through {fb[v]['flagged']}/{fb[v]['rows']}"
        for v, label in (
            ("incident", "confirmed incidents"),
            ("false_alarm", "confirmed false alarms"),
        )
        if fb.get(v, {}).get("rows")
    ]
    return "; " + ", ".join(parts) if parts else ""


def decide(
    data: SeriesData,
    evaluation: dict[str, Any],
    promoted: IsolationForest | None,
    promoted_names: list[str] | None,
) -> tuple[bool, str, float | None]:
    """(promote?, why, the promoted version's tail rate) for a fitted candidate; the why
    says how many of the operators' verdicts on the tail its forest lets through."""
    ok, why, old_rate = _decide(data, evaluation, promoted, promoted_names)
    return ok, why + _verdict_words(evaluation), old_rate


def _decide(
    data: SeriesData,
    evaluation: dict[str, Any],
    promoted: IsolationForest | None,
    promoted_names: list[str] | None,
) -> tuple[bool, str, float | None]:
    rate = evaluation["tail_anomaly_rate"]
    bound = TAIL_RATE_FACTOR * data.params["contamination"]
    if rate > bound:
        return False, f"tail anomaly rate {rate:.3%} above the bound {bound:.3%}", None
    if promoted is None:
        return True, "first version" if promoted_names is None else "promoted one unusable", None
    if promoted_names != data.feature_names:
        return True, "features changed since the promoted version", None
    old_scores = -promoted.score_samples(data.X_tail)
    old_rate = float(np.mean(old_scores > -float(promoted.offset_)))
    if rate > old_rate + TAIL_RATE_SLACK:
        return (
            False,
            f"worse than the promoted version on the tail ({rate:.3%} > {old_rate:.3%})",
            old_rate,
        )
    mine = evaluation.get("feedback") or {}
    theirs = _verdicts_flagged(lambda X: -promoted.score_samples(X), data)
    for verdict, worse, what in (
        ("incident", lambda a, b: a < b, "catches fewer confirmed incidents"),
        ("false_alarm", lambda a, b: a > b, "lets more confirmed false alarms through"),
    ):
        a = mine.get(verdict, {}).get("flagged", 0)
        b = theirs.get(verdict, {}).get("flagged", 0)
        if worse(a, b):
            return False, f"{what} than the promoted version ({a} vs {b})", old_rate
    return True, f"tail anomaly rate {rate:.3%} (promoted version: {old_rate:.3%})", old_rate


class Trainer:
    """Runs the retrain job against a database and a source of history."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        fetch: Callable[[Query, float, float, float], SeriesBatch],
        queries: list[Query],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.fetch = fetch
        self.queries = queries
        self.registry = ModelRegistry(engine, keep=settings.model_keep)
        self.store = FeatureStore(engine)

    def run(
        self,
        *,
        now: float | None = None,
        dry_run: bool = False,
        series: list[str] | None = None,
        wait: float = 0.0,
        progress: bool | None = None,
        store_features: bool = True,
    ) -> TrainReport:
        now = time.time() if now is None else now
        report = TrainReport(started=now, dry_run=dry_run)
        only = set(series) if series else None
        queries = [
            q
            for q in self.queries
            if only is None or q.name in only or any(s.startswith(q.name + "{") for s in only)
        ]
        if only and not queries:
            raise TrainError(f"--series matches no catalogue query: {', '.join(sorted(only))}")
        lease = Lease(self.engine, "train", ttl=600.0)
        lease.acquire(wait=wait)
        t0 = time.perf_counter()
        try:
            with _progress(progress) as bar:
                for q in queries:
                    self._train_query(q, now, report, only, dry_run, bar, store_features, lease)
        finally:
            lease.release()
        report.duration = time.perf_counter() - t0
        return report

    def _train_query(
        self,
        q: Query,
        now: float,
        report: TrainReport,
        only: set[str] | None,
        dry_run: bool,
        bar: Any,
        store_features: bool,
        lease: Lease,
    ) -> None:
        s = self.settings
        step = q.step_seconds(s)
        start = now - s.train_history_seconds
        task = bar.add_task(f"{q.name}: fetching", total=None) if bar else None
        t0 = time.perf_counter()
        try:
            batch = self.fetch(q, start, now, step)
        except AiopsError as exc:
            report.errors[q.name] = str(exc)
            log.error("train fetch failed query=%s error=%s", q.name, exc)
            if bar:
                bar.update(task, description=f"{q.name}: fetch failed", total=1, completed=1)
            return
        finally:
            report.add_phase("fetch", time.perf_counter() - t0)
        lease.refresh()
        store = self.store if store_features and not dry_run else None
        t0 = time.perf_counter()
        items, skipped, stored = prepare(batch, q, s, tail=s.train_tail, only=only, store=store)
        if store is not None:
            store.prune_features(now - s.feature_retention_seconds)
        report.add_phase("features", time.perf_counter() - t0)
        report.feature_rows += stored
        report.outcomes += skipped
        log.info(
            "train query=%s series=%d trainable=%d feature_rows=%d",
            q.name,
            len(batch),
            len(items),
            stored,
        )
        if bar:
            bar.update(task, description=f"{q.name}: fitting", total=len(items), completed=0)
        t0 = time.perf_counter()
        lease.refresh()
        lease_at = time.monotonic()
        promoted = {r.series: r for r in self.registry.promoted(metric=q.name)}
        register_s = 0.0
        for i, result in fit_all(items, jobs=s.train_jobs, dask_address=s.dask_address):
            t1 = time.perf_counter()
            data = items[i]
            report.outcomes.append(self._register(data, result, promoted.get(data.key), dry_run))
            register_s += time.perf_counter() - t1
            if bar:
                bar.advance(task, 1)
            if time.monotonic() - lease_at > 60:
                lease.refresh()
                lease_at = time.monotonic()
        report.add_phase("fit", time.perf_counter() - t0 - register_s)
        report.add_phase("register", register_s)

    def _register(self, data: SeriesData, result: Any, current: Any, dry_run: bool) -> Outcome:
        out = Outcome(data.key, data.metric, samples=len(data.X_train), tail_rows=len(data.X_tail))
        if isinstance(result, BaseException):
            out.decision, out.reason = "failed", f"fit failed: {result}"
            log.error("train fit failed series=%s error=%s", data.key, result)
            return out
        evaluation, blob = result
        out.tail_rate = evaluation["tail_anomaly_rate"]
        old_model, old_names = None, None
        if current is not None:
            old_names = list(current.feature_names)
            try:
                old_model = self.registry.load(current)
            except ModelLoadError as exc:
                log.warning(
                    "promoted model unusable series=%s version=%s reason=%s",
                    data.key,
                    current.version,
                    exc,
                )
                old_names = []
        ok, why, old_rate = decide(data, evaluation, old_model, old_names if current else None)
        out.promoted_rate = old_rate
        evaluation = {**evaluation, "promoted_tail_anomaly_rate": old_rate, "decision": why}
        out.reason = why
        if dry_run:
            out.decision = "would promote" if ok else "rejected"
            return out
        record = self.registry.save(
            series=data.key,
            metric=data.metric,
            labels=data.labels,
            feature_names=data.feature_names,
            params=data.params,
            train_start=data.train_start,
            train_end=data.train_end,
            n_samples=len(data.X_train),
            evaluation=evaluation,
            promote=ok,
            note=why,
            blob=blob,
        )
        out.version = record.version
        out.decision = "promoted" if ok else "rejected"
        log.info(
            "train series=%s version=%d decision=%s reason=%s",
            data.key,
            record.version,
            out.decision,
            why,
        )
        return out


@contextmanager
def _progress(enabled: bool | None) -> Iterator[Any]:
    """A rich progress bar on a terminal, nothing (log lines only) otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        with nullcontext():
            yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        yield bar


def prometheus_fetch(settings: Any) -> Any:
    """``fetch(query, start, end, step)`` reading history from Prometheus in chunks."""
    from detector.source import PrometheusSource

    source = PrometheusSource.from_settings(settings, min_timeout=30.0)

    def fetch(query: Any, start: float, end: float, step: float) -> Any:
        return source.fetch_range(query, start=start, end=end, step=step)

    return fetch


def retrain(detector: Any) -> TrainReport:
    """The nightly retrain of a running detector service, on its settings, database and
    catalogue (``detector.service`` schedules it at AIOPS_RETRAIN_CRON): what
    ``aiops train`` does, without a progress bar. A held lock raises ``LockHeld``."""
    trainer = Trainer(
        detector.settings,
        detector.engine,
        fetch=prometheus_fetch(detector.settings),
        queries=detector.queries,
    )
    return trainer.run(progress=False)
