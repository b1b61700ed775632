"""The live detector with models from the registry (``build_detector`` on a SQLite file).

A promoted trained model scores its series from the next cycle on; other series
keep the baseline model; a refused artifact or an unreachable database never
stops a cycle.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from aiops.core.series import series_key
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import build_detector
from detector.source import SeriesBatch, align_end
from feature_store import tables
from feature_store.registry import ModelRegistry
from training.train import fit_one, prepare

T = 361  # the default 6h lookback at 60 s
STEP = 60.0
QUERY = Query(name="latency_p99", promql="x", direction="up", labels=("app",), seasonality="none")
CHECKOUT = {"app": "checkout"}
SEARCH = {"app": "search"}
KEY = series_key(QUERY.name, CHECKOUT)


class ScriptedSource:
    """Stands in for Prometheus: returns the prepared rows of each query."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[list[dict[str, str]], np.ndarray]] = {}

    def fetch(self, query: Query, *, end: float, lookback: float, step: float) -> SeriesBatch:
        # a Prometheus started just now: the windows of earlier days (the seasonal
        # history, see detector.season) hold nothing
        self.latest = max(getattr(self, "latest", end), end)
        if end < self.latest - 3600:
            return SeriesBatch(query.name, end - lookback, step, [], np.empty((0, 0)))
        labels, values = self.rows[query.name]
        start = align_end(end, step) - step * (values.shape[1] - 1)
        return SeriesBatch(query.name, start, step, list(labels), values.copy())

    def check(self, query: Query) -> None:
        pass


def series(seed: int, n: int = T, shift: float = 0.0) -> np.ndarray:
    x = 0.2 + np.random.default_rng(seed).normal(0, 0.004, n)
    x[-30:] += shift
    return x


@pytest.fixture
def world(tmp_path, monkeypatch):
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG", "AIOPS_DATABASE_URL"):
        monkeypatch.delenv(k, raising=False)
    db = tmp_path / "aiops.db"
    settings = load_settings(
        interval_seconds=60, stale_after_seconds=300, database_url=f"sqlite:///{db}"
    )
    source = ScriptedSource()
    source.rows[QUERY.name] = ([CHECKOUT, SEARCH], np.stack([series(1), series(2)]))
    det = build_detector(settings, source=source, queries=[QUERY])
    try:
        yield det, source, db
    finally:
        det.engine.dispose()


def promote_trained(det, *, seed: int, now: float):
    """Train checkout's model on 2000 points of history (as ``aiops train`` does); promote it."""
    history = series(100 + seed, n=2000)[None, :]
    batch = SeriesBatch(QUERY.name, now - STEP * 2000, STEP, [CHECKOUT], history)
    items, skipped, _ = prepare(batch, QUERY, det.settings, tail=0.15)
    assert not skipped and len(items) == 1
    data = items[0]
    evaluation, blob = fit_one(data)
    record = ModelRegistry(det.engine).save(
        series=data.key,
        metric=data.metric,
        labels=data.labels,
        blob=blob,
        feature_names=data.feature_names,
        params=data.params,
        train_start=data.train_start,
        train_end=data.train_end,
        n_samples=len(data.X_train),
        evaluation=evaluation,
        promote=True,
    )
    model = ModelRegistry(det.engine).load(record)
    return record, model, data.feature_names


def by_app(report) -> dict[str, object]:
    return {r.labels["app"]: r for r in report.results[QUERY.name]}


def model_info(det, labels, version, source):
    return det.registry.get_sample_value(
        "aiops_model_info",
        {"metric": QUERY.name, **labels, "version": version, "source": source},
    )


def expected_score(model, names, result) -> float:
    row = np.array([[result.features[n] for n in names]])
    return float(-model.score_samples(row)[0])


def test_promoted_model_scores_its_series_and_the_others_keep_the_baseline(world):
    det, _, _ = world
    now = time.time()
    rec, model, names = promote_trained(det, seed=1, now=now)
    assert rec.tag == "v1"
    assert det.provider.trained(QUERY.name) == []  # picked up by the cycle, not before

    report = det.run_cycle(now)
    assert report.outcome == "ok"
    res = by_app(report)
    checkout, search = res["checkout"], res["search"]
    assert checkout.status == search.status == "ok"
    assert checkout.model_version == "v1"
    assert search.model_version.startswith("baseline-")
    assert list(checkout.features) == list(names)  # the columns the model was trained on
    assert checkout.forest_score == pytest.approx(expected_score(model, names, checkout), abs=1e-12)
    # ... and not what the baseline model says about the same row
    baseline = det.provider.current(QUERY.name)
    row = np.array([[checkout.features[n] for n in names]])
    assert abs(baseline.scorer.score(row)[0] - checkout.score) > 1e-6
    assert checkout.model_fitted_at == pytest.approx(rec.created_at, abs=1e-6)

    assert model_info(det, CHECKOUT, "v1", "registry") == 1
    assert model_info(det, SEARCH, search.model_version, "baseline") == 1
    assert model_info(det, CHECKOUT, search.model_version, "baseline") is None
    assert (
        det.registry.get_sample_value("aiops_detector_trained_models", {"query": QUERY.name}) == 1
    )
    assert det.registry.get_sample_value("aiops_detector_database_up") == 1


def test_a_new_promotion_and_a_rollback_are_picked_up_without_restart(world):
    det, _, _ = world
    now = time.time()
    rec1, v1, names = promote_trained(det, seed=1, now=now)
    first = by_app(det.run_cycle(now))["checkout"]
    assert first.model_version == "v1"

    rec2, v2, _ = promote_trained(det, seed=2, now=now)
    assert rec2.tag == "v2"
    second = by_app(det.run_cycle(now + 60))["checkout"]
    assert second.model_version == "v2"
    assert second.forest_score == pytest.approx(expected_score(v2, names, second), abs=1e-12)
    assert abs(expected_score(v1, names, second) - second.forest_score) > 1e-6
    assert model_info(det, CHECKOUT, "v2", "registry") == 1
    assert model_info(det, CHECKOUT, "v1", "registry") is None

    ModelRegistry(det.engine).rollback(KEY)
    third = by_app(det.run_cycle(now + 120))["checkout"]
    assert third.model_version == "v1"
    assert third.forest_score == pytest.approx(expected_score(v1, names, third), abs=1e-12)
    # the model's age counts from its training, not from the rollback that promoted it again
    assert ModelRegistry(det.engine).get(KEY).promoted_at > rec1.created_at
    assert third.model_fitted_at == pytest.approx(rec1.created_at, abs=1e-6)


def _refusals(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aiops.models" and "refused" in r.message]


def test_a_tampered_artifact_falls_back_to_the_baseline_once(world, caplog):
    caplog.set_level(logging.INFO, logger="aiops.models")
    det, _, _ = world
    now = time.time()
    promote_trained(det, seed=1, now=now)
    assert by_app(det.run_cycle(now))["checkout"].model_version == "v1"

    rec2, _, _ = promote_trained(det, seed=2, now=now)
    t = tables.models
    with det.engine.begin() as conn:
        blob = bytearray(conn.execute(select(t.c.artifact).where(t.c.id == rec2.id)).scalar())
        blob[len(blob) // 3] ^= 0x01
        conn.execute(update(t).where(t.c.id == rec2.id).values(artifact=bytes(blob)))

    failures = {"query": QUERY.name, "reason": "checksum"}
    for i in range(1, 3):
        res = by_app(det.run_cycle(now + 60 * i))
        assert res["checkout"].model_version.startswith("baseline-")
        assert res["checkout"].status == "ok" and np.isfinite(res["checkout"].score)
        assert res["search"].model_version.startswith("baseline-")
        assert model_info(det, CHECKOUT, "v2", "registry") is None
        assert model_info(det, CHECKOUT, "v1", "registry") is None
        got = det.registry.get_sample_value("aiops_detector_model_load_failures_total", failures)
        assert got == 1  # counted once, not once per cycle
        assert len(_refusals(caplog)) == 1  # logged once
        assert det.registry.get_sample_value("aiops_detector_database_up") == 1
    assert "reason=checksum" in _refusals(caplog)[0].getMessage()
    assert set(det.provider.failures()) == {KEY}

    # the refused version is deleted: nothing promoted, nothing refused any more
    with det.engine.begin() as conn:
        conn.execute(t.delete().where(t.c.id == rec2.id))
    assert by_app(det.run_cycle(now + 180))["checkout"].model_version.startswith("baseline-")
    assert det.provider.failures() == {}

    # a good version is used at the next cycle
    rec3, _, _ = promote_trained(det, seed=3, now=now)
    assert by_app(det.run_cycle(now + 240))["checkout"].model_version == rec3.tag


def test_a_promoted_model_that_cannot_score_does_not_break_the_cycle(world):
    det, _, _ = world
    now = time.time()
    _, _, names = promote_trained(det, seed=1, now=now)
    # an unfitted forest, and one fitted on other columns than its recorded names
    bad = [
        IsolationForest(n_estimators=100),
        IsolationForest(n_estimators=100, random_state=0).fit(np.zeros((20, len(names) + 3))),
    ]
    for i, model in enumerate(bad, start=1):
        ModelRegistry(det.engine).save(
            series=KEY,
            metric=QUERY.name,
            labels=CHECKOUT,
            model=model,
            feature_names=names,
            params={},
            train_start=0.0,
            train_end=1.0,
            n_samples=20,
            evaluation={},
            promote=True,
        )
        res = by_app(det.run_cycle(now + 60 * i))  # does not raise
        assert res["checkout"].model_version.startswith("baseline-")
        assert np.isfinite(res["checkout"].score)
    for reason in ("not_fitted", "feature_mismatch"):
        assert (
            det.registry.get_sample_value(
                "aiops_detector_model_load_failures_total",
                {"query": QUERY.name, "reason": reason},
            )
            == 1
        )


def _break(db: Path) -> list[tuple[Path, Path]]:
    """Make the database file unopenable: move it (and its WAL) aside, a folder in its place."""
    moved = []
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            aside = p.with_name(p.name + ".aside")
            p.rename(aside)
            moved.append((aside, p))
    db.mkdir()
    return moved


def test_an_unreachable_database_never_stops_the_cycle(world, caplog):
    det, _, db = world
    now = time.time()
    promote_trained(det, seed=1, now=now)
    assert by_app(det.run_cycle(now))["checkout"].model_version == "v1"
    assert det.registry.get_sample_value("aiops_detector_database_up") == 1

    det.engine.dispose()
    moved = _break(db)
    with pytest.raises(OperationalError, match="unable to open"), det.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # the outage is real

    report = det.run_cycle(now + 60)  # does not raise
    assert report.outcome == "ok"
    res = by_app(report)
    assert res["checkout"].model_version == "v1"  # the models already loaded stay in use
    assert res["search"].model_version.startswith("baseline-")
    assert det.registry.get_sample_value("aiops_detector_database_up") == 0
    assert det.provider.state.up is False
    stored = det.registry.get_sample_value(
        "aiops_detector_store_errors_total", {"table": "aiops_features"}
    )
    assert stored and stored >= 1
    det.run_cycle(now + 120)  # still down: still no exception
    assert det.registry.get_sample_value("aiops_detector_database_up") == 0

    # the database comes back: picked up again at the next cycle
    shutil.rmtree(db)
    for aside, p in moved:
        aside.rename(p)
    det.run_cycle(now + 180)
    assert det.registry.get_sample_value("aiops_detector_database_up") == 1
    assert det.provider.state.up is True


def test_anomalies_are_recorded_with_the_model_version(world):
    det, source, _ = world
    now = time.time()
    promote_trained(det, seed=1, now=now)
    source.rows[QUERY.name] = (
        [CHECKOUT, SEARCH],
        np.stack([series(1, shift=0.1), series(2, shift=0.1)]),
    )
    report = det.run_cycle(now)
    res = by_app(report)
    assert res["checkout"].anomalous and res["search"].anomalous
    t = tables.anomalies
    with det.engine.connect() as conn:
        rows = {r.series: r for r in conn.execute(select(t))}
    assert set(rows) == {KEY, series_key(QUERY.name, SEARCH)}
    assert rows[KEY].model_version == "v1"
    assert rows[KEY].score == pytest.approx(res["checkout"].score)
    assert rows[KEY].ts == res["checkout"].observed_at
    assert rows[KEY].reasons  # why it was anomalous
    assert rows[series_key(QUERY.name, SEARCH)].model_version == res["search"].model_version
    assert rows[series_key(QUERY.name, SEARCH)].model_version.startswith("baseline-")
