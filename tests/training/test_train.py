"""The retrain job on synthetic history: promotion rules, dry runs, filters, the lock, Dask."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from aiops.core.db import make_engine
from aiops.core.errors import QueryError
from aiops.core.series import series_key
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.source import SeriesBatch
from feature_store import tables
from feature_store.locks import Lease, LockHeld
from feature_store.registry import ModelRegistry
from sql.migrate import migrate
from tests.integration.conftest import poll
from training.train import Trainer, TrainError, prepare, seed_for

NOW = 1_780_000_000.0
STEP = 60.0
QUERY = Query(name="lat", promql="x", direction="up", seasonality="daily")
APPS = ("a0", "a1", "a2")


def history(
    start: float, end: float, step: float, *, incident: bool = False, n: int = len(APPS)
) -> SeriesBatch:
    """Daily-seasonal noise; with ``incident`` a large shift over the newest 6 hours."""
    t = np.arange(start, end + step / 2, step)
    rng = np.random.default_rng(0)
    rows = [10 + 2 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 0.3, len(t)) for _ in range(n)]
    values = np.stack(rows)
    if incident:
        values[:, t > end - 6 * 3600] += 25.0
    return SeriesBatch("lat", float(t[0]), step, [{"app": a} for a in APPS[:n]], values)


def make_fetch(**kw):
    calls = []

    def fetch(query, start, end, step):
        calls.append((query.name, start, end, step))
        return history(start, end, step, **kw)

    fetch.calls = calls
    return fetch


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(
        database_url=f"sqlite:///{tmp_path}/aiops.db", train_history="4d", train_jobs=1
    )


@pytest.fixture
def engine(settings):
    engine = make_engine(settings.database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def trainer(settings, engine, **kw) -> Trainer:
    return Trainer(settings, engine, fetch=make_fetch(**kw), queries=[QUERY])


def test_first_run_promotes_one_model_per_series_and_stores_features(settings, engine):
    report = trainer(settings, engine).run(now=NOW, progress=False)
    assert report.count("promoted") == len(APPS)
    registry = ModelRegistry(engine)
    promoted = registry.promoted(metric="lat")
    assert sorted(r.series for r in promoted) == sorted(series_key("lat", {"app": a}) for a in APPS)
    rec = promoted[0]
    # seasonal query: the model sees hour-of-day columns after the detector's features
    assert rec.feature_names[-2:] == ["hour_sin", "hour_cos"]
    assert rec.params["contamination"] == QUERY.contamination
    assert rec.params["random_state"] == seed_for(rec.series)
    assert rec.train_end < NOW - 0.15 * 2 * 86400 + 3600  # the tail is held back
    assert rec.evaluation["tail_rows"] >= 60 and "tail_anomaly_rate" in rec.evaluation
    assert rec.n_samples == rec.evaluation["train_rows"] > 1000
    model = registry.load(rec)
    assert model.n_features_in_ == len(rec.feature_names)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(tables.features)).scalar()
    assert rows == report.feature_rows > 1000


def test_history_is_asked_for_the_configured_range(settings, engine):
    t = trainer(settings, engine)
    t.run(now=NOW, progress=False)
    ((name, start, end, step),) = t.fetch.calls
    assert (name, end, step) == ("lat", NOW, STEP)
    assert end - start == pytest.approx(4 * 86400)


def test_second_run_replaces_the_promoted_version(settings, engine):
    first = trainer(settings, engine).run(now=NOW, progress=False)
    report = trainer(settings, engine).run(now=NOW + 86400, progress=False)
    assert report.count("promoted") == len(APPS)
    # feature rows are stored incrementally: the second run adds the new day only
    assert first.feature_rows > 2 * len(APPS) * 1440 * 0.9
    assert report.feature_rows == len(APPS) * 1440
    versions = {r.series: r.version for r in ModelRegistry(engine).promoted()}
    assert set(versions.values()) == {2}
    states = {(r.version, r.state) for r in ModelRegistry(engine).list(series=next(iter(versions)))}
    assert states == {(1, "retired"), (2, "promoted")}
    assert all(o.promoted_rate is not None for o in report.outcomes)


def test_candidate_flagging_its_tail_is_not_promoted(settings, engine):
    trainer(settings, engine).run(now=NOW, progress=False)
    report = trainer(settings, engine, incident=True).run(now=NOW + 86400, progress=False)
    assert report.count("promoted") == 0
    assert report.count("rejected") == len(APPS)
    assert all("above the bound" in o.reason for o in report.outcomes)
    registry = ModelRegistry(engine)
    assert {r.version for r in registry.promoted()} == {1}  # the old versions stay in use
    assert {r.state for r in registry.list(state="candidate")} == {"candidate"}


def test_dry_run_stores_and_promotes_nothing(settings, engine):
    report = trainer(settings, engine).run(now=NOW, progress=False, dry_run=True)
    assert report.dry_run and report.count("would promote") == len(APPS)
    assert ModelRegistry(engine).list() == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.features)).scalar() == 0


def test_series_filter_trains_only_the_named_series(settings, engine):
    key = series_key("lat", {"app": "a1"})
    report = trainer(settings, engine).run(now=NOW, progress=False, series=[key])
    assert [o.series for o in report.outcomes] == [key]
    assert [r.series for r in ModelRegistry(engine).list()] == [key]
    with pytest.raises(TrainError, match="matches no catalogue query"):
        trainer(settings, engine).run(now=NOW, progress=False, series=["nope"])


def test_too_little_history_is_skipped_with_a_reason(tmp_path, engine):
    short = load_settings(
        database_url=str(engine.url), train_history="3h", train_jobs=1, lookback="6h"
    )
    report = Trainer(short, engine, fetch=make_fetch(), queries=[QUERY]).run(
        now=NOW, progress=False
    )
    assert report.count("skipped") == len(APPS)
    assert all("too little history" in o.reason for o in report.outcomes)
    assert ModelRegistry(engine).list() == []


def test_a_failed_fetch_is_reported_not_raised(settings, engine):
    def broken(query, start, end, step):
        raise QueryError(query.name, "unreachable", "cannot connect")

    report = Trainer(settings, engine, fetch=broken, queries=[QUERY]).run(now=NOW, progress=False)
    assert "unreachable" in report.errors["lat"]
    assert report.outcomes == []


def test_a_second_run_stops_while_the_lock_is_held(settings, engine):
    holder = Lease(engine, "train").acquire()
    try:
        with pytest.raises(LockHeld, match="holds the database lock") as err:
            trainer(settings, engine).run(now=NOW, progress=False)
        assert holder.holder in str(err.value)
    finally:
        holder.release()
    assert ModelRegistry(engine).list() == []


def test_concurrent_runs_never_write_the_same_version_twice(settings, engine):
    """Run A holds the lock while fetching; run B (another engine) stops, then waits for A."""
    started, go = threading.Event(), threading.Event()

    def slow_fetch(query, start, end, step):
        started.set()
        assert go.wait(30)
        return history(start, end, step)

    results: dict[str, object] = {}

    def run_a():
        results["a"] = Trainer(settings, engine, fetch=slow_fetch, queries=[QUERY]).run(
            now=NOW, progress=False
        )

    a = threading.Thread(target=run_a)
    a.start()
    assert started.wait(30)
    other = make_engine(settings.database_url)
    with pytest.raises(LockHeld):
        Trainer(settings, other, fetch=make_fetch(), queries=[QUERY]).run(now=NOW, progress=False)

    def run_b():
        results["b"] = Trainer(settings, other, fetch=make_fetch(), queries=[QUERY]).run(
            now=NOW, progress=False, wait=60
        )

    b = threading.Thread(target=run_b)
    b.start()
    go.set()
    a.join(60)
    b.join(60)
    poll(lambda: "b" in results, timeout=5, what="second run")
    versions = [(r.series, r.version) for r in ModelRegistry(engine).list()]
    assert len(versions) == len(set(versions)) == 2 * len(APPS)
    assert {v for _, v in versions} == {1, 2}
    other.dispose()


def test_prepare_keeps_the_gap_between_training_rows_and_tail(settings):
    batch = history(NOW - 2 * 86400, NOW, STEP, n=1)
    items, skipped, _ = prepare(batch, QUERY, settings, tail=0.15)
    assert not skipped
    (item,) = items
    tail_start = batch.start + int(batch.values.shape[1] * 0.85) * STEP
    assert item.train_end <= tail_start - 60 * STEP
    assert len(item.X_tail) <= batch.values.shape[1] * 0.15 + 1
    assert item.X_train.shape[1] == len(item.feature_names)
    assert np.isfinite(item.X_train).all()


@pytest.mark.timeout(180)
def test_dask_cluster_promotes_the_same_models_as_a_local_run(tmp_path):
    """AIOPS_DASK_ADDRESS sends the fits to a 2-worker Dask cluster: same models, same verdicts."""
    from distributed import Client, LocalCluster

    def run(name: str, dask_address: str | None):
        s = load_settings(
            database_url=f"sqlite:///{tmp_path}/{name}.db",
            train_history="4d",
            train_jobs=1,
            dask_address=dask_address,
        )
        engine = make_engine(s.database_url)
        migrate(engine)
        report = trainer(s, engine).run(now=NOW, progress=False)
        registry = ModelRegistry(engine)
        models = {r.series: (r, registry.load(r)) for r in registry.promoted()}
        engine.dispose()
        return report, models

    local_report, local = run("local", None)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
        dask_report, remote = run("dask", cluster.scheduler_address)
    assert sorted(local) == sorted(remote) and len(local) == len(APPS)
    probe = np.random.default_rng(5).normal(
        size=(200, len(next(iter(local.values()))[0].feature_names))
    )
    for key, (rec, model) in local.items():
        rec2, model2 = remote[key]
        np.testing.assert_array_equal(model.score_samples(probe), model2.score_samples(probe))
        assert rec.evaluation["tail_anomaly_rate"] == rec2.evaluation["tail_anomaly_rate"]
        assert rec.n_samples == rec2.n_samples
    assert [o.decision for o in local_report.outcomes] == [o.decision for o in dask_report.outcomes]


def test_training_on_postgresql(pg_url):
    s = load_settings(database_url=pg_url, train_history="4d", train_jobs=1)
    engine = make_engine(s.database_url)
    migrate(engine)
    report = trainer(s, engine).run(now=NOW, progress=False)
    again = trainer(s, engine).run(now=NOW + 3600, progress=False)
    assert report.count("promoted") == len(APPS)
    assert again.feature_rows == len(APPS) * 60  # only the new hour is written
    registry = ModelRegistry(engine)
    assert {r.version for r in registry.promoted()} == {2}
    rec = registry.promoted()[0]
    assert registry.load(rec).n_features_in_ == len(rec.feature_names)
    with engine.connect() as conn:
        first, last = conn.execute(
            select(func.min(tables.features.c.ts), func.max(tables.features.c.ts))
        ).one()
    # AIOPS_FEATURE_RETENTION (2d): the rows older than 2 days before the run are pruned
    assert last == NOW + 3600 and first >= NOW + 3600 - 2 * 86400
    assert first < NOW + 3600 - 2 * 86400 + 3 * 3600
    engine.dispose()


def test_feature_rows_are_kept_for_the_retention_only(tmp_path):
    s = load_settings(
        database_url=f"sqlite:///{tmp_path}/r.db",
        train_history="4d",
        train_jobs=1,
        feature_retention="12h",
    )
    engine = make_engine(s.database_url)
    migrate(engine)
    report = trainer(s, engine).run(now=NOW, progress=False)
    assert report.count("promoted") == len(APPS)  # trained on 2 days all the same
    assert report.feature_rows == len(APPS) * 12 * 60
    with engine.connect() as conn:
        first = conn.execute(select(func.min(tables.features.c.ts))).scalar()
    assert first == NOW - 12 * 3600 + STEP
    engine.dispose()


def test_the_retrain_stores_each_series_own_levels_and_the_detector_reads_them(settings, engine):
    """The series' own level for each reason (detector.verdict.latest_levels) after its
    history is stored in the evaluation; the live detector's registry provider hands them
    to the verdict, since its own 6 h lookback is too short to learn them. A model trained
    before the levels were stored has only its spike level, and that is still read."""
    from detector.explain import REASONS
    from detector.models import RegistryModelProvider, stored_levels
    from detector.scoring import BaselineModelProvider

    trainer(settings, engine).run(now=NOW, progress=False)
    registry = ModelRegistry(engine)
    promoted = registry.promoted(metric="lat")
    levels = {r.series: r.evaluation["levels"] for r in promoted}
    assert levels and all(set(v) == set(REASONS) for v in levels.values())
    # four days of quiet 1-minute noise: the spike's base level, AIOPS_SPIKE_Z, and every
    # other reason at a level of at least its threshold
    assert {v["spike"] for v in levels.values()} == {settings.spike_z}
    assert all(x >= 1.0 for v in levels.values() for r, x in v.items() if r != "spike")
    provider = RegistryModelProvider(registry, BaselineModelProvider(refit_seconds=3600))
    provider.refresh()
    assert provider.levels("lat") == levels
    assert provider.levels("other") == {}
    # the query is daily: no series takes the weekly profile, and the live detector
    # fetches no weekly slice for it
    assert all(r.evaluation["weekly"] is False for r in promoted)
    assert set(provider.weekly("lat")) == set(levels) and not any(provider.weekly("lat").values())
    assert stored_levels({"spike_level": 9.8}) == {"spike": 9.8}
    assert stored_levels({"spike_level": None}) == {} and stored_levels(None) == {}
    assert stored_levels({"levels": {"spike": 7.0, "level_shift": float("nan")}}) == {"spike": 7.0}


def test_the_promotion_gate_weighs_the_operators_verdicts_on_the_tail():
    """A candidate whose forest lets through fewer confirmed incidents, or more confirmed
    false alarms, than the promoted version's is not promoted; the evaluation counts them."""
    from sklearn.ensemble import IsolationForest

    from aiops.core import defaults
    from training.train import SeriesData, _verdicts_flagged, decide

    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, (2000, 4))
    far = np.full((3, 4), 6.0)  # the onsets of three confirmed incidents
    promoted = IsolationForest(random_state=0, contamination=0.01).fit(normal)
    # a candidate fitted on a history that held such rows: it learnt them as normal
    blind = IsolationForest(random_state=0, contamination=0.01).fit(
        np.vstack([normal, 6.0 + rng.normal(0, 1, (2000, 4))])
    )
    names = ["a", "b", "c", "d"]

    def judged(candidate, verdict_rows):
        data = SeriesData(
            key="lat",
            metric="lat",
            labels={},
            X_train=normal,
            X_tail=normal[np.abs(normal).max(axis=1) < 1.0][:200],  # ordinary rows
            feature_names=names,
            params={"contamination": 0.01, "score_thresh": defaults.SCORE_THRESH},
            train_start=0.0,
            train_end=1.0,
            verdict_rows=verdict_rows,
        )
        tail = -candidate.score_samples(data.X_tail)
        evaluation = {
            "tail_anomaly_rate": float(np.mean(tail > -candidate.offset_)),
            "feedback": _verdicts_flagged(lambda X: -candidate.score_samples(X), data),
        }
        return evaluation, decide(data, evaluation, promoted, names)

    evaluation, (ok, why, _) = judged(blind, {"incident": far})
    assert evaluation["feedback"]["incident"] == {"rows": 3, "flagged": 0}
    assert not ok and "catches fewer confirmed incidents than the promoted version (0 vs 3)" in why
    assert why.endswith("; confirmed incidents let through 0/3")  # the report says so
    # the same candidate on a false alarm at those rows: it lets fewer through, promoted
    evaluation, (ok, why, _) = judged(blind, {"false_alarm": far})
    assert ok, why
    # promoted, a version that learnt them as normal; a candidate that would flag them
    promoted = blind
    candidate = IsolationForest(random_state=0, contamination=0.01).fit(normal)
    evaluation, (ok, why, _) = judged(candidate, {"false_alarm": far})
    assert evaluation["feedback"]["false_alarm"]["flagged"] == 3
    assert not ok and "lets more confirmed false alarms through" in why
