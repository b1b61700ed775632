"""FeatureStore: feature rows and scored anomalies on SQLite and real PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from aiops.core.db import make_engine
from aiops.core.series import series_key
from detector.explain import Reason
from detector.features import Features, FeatureSpec, compute_features
from detector.result import SeriesResult
from feature_store import tables
from feature_store.store import FeatureStore
from sql.migrate import migrate
from tests.feature_store.dialects import DIALECTS, database_url

SPEC = FeatureSpec(step=60.0, baseline=3600.0)
T0 = 1_700_000_000.0
N_TIMES = 240
TIMES = T0 + SPEC.step * np.arange(N_TIMES)
LABELS = [{"app": "api", "namespace": "shop"}, {"app": "web", "namespace": "shop"}]
METRIC = "latency_p99"


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> FeatureStore:
    return FeatureStore(engine)


def features(offset: float = 0.0, n_series: int = 2) -> Features:
    rng = np.random.default_rng(7)
    values = 100.0 + offset + rng.normal(0.0, 2.0, (n_series, N_TIMES))
    values[:, -20:] += 15.0  # a level shift, so the z features are not all near zero
    feats = compute_features(values, SPEC)
    assert feats.ready.sum() > 100, "the spec must leave plenty of ready rows"
    return feats


def count(engine: Engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


# -- features -------------------------------------------------------------------------------


def test_write_features_stores_one_row_per_ready_series_and_time(engine, store):
    feats = features()

    written = store.write_features(METRIC, LABELS, TIMES, feats, "up")

    assert written == int(feats.ready.sum())
    assert count(engine, tables.features) == written
    with engine.connect() as conn:
        keys = set(conn.execute(select(tables.features.c.series).distinct()).scalars())
        metrics = set(conn.execute(select(tables.features.c.metric).distinct()).scalars())
    assert keys == {
        'latency_p99{app="api",namespace="shop"}',
        'latency_p99{app="web",namespace="shop"}',
    }
    assert metrics == {METRIC}


def test_writing_the_same_rows_again_updates_instead_of_duplicating(engine, store):
    first = features()
    store.write_features(METRIC, LABELS, TIMES, first, "up")
    n = count(engine, tables.features)

    assert store.write_features(METRIC, LABELS, TIMES, first, "up") == n
    assert count(engine, tables.features) == n

    shifted = features(offset=50.0)  # same grid, different values
    store.write_features(METRIC, LABELS, TIMES, shifted, "up")

    assert count(engine, tables.features) == n
    frame = store.read_features(series_key(METRIC, LABELS[0]))
    last = N_TIMES - 1
    assert frame.loc[TIMES[last], "value"] == pytest.approx(shifted.value[0, last])
    assert frame.loc[TIMES[last], "value"] != pytest.approx(first.value[0, last])


def test_read_features_returns_the_window_in_time_order_with_named_columns(store):
    feats = features()
    store.write_features(METRIC, LABELS, TIMES, feats, "down")
    start, end = TIMES[150], TIMES[200]

    key = series_key(METRIC, LABELS[1])
    frame = store.read_features(key, start=start, end=end, columns=feats.names())

    assert list(frame.columns) == ["value", "baseline", "scale", *feats.names()]
    # without an order, the feature columns come by name
    plain = store.read_features(key, start=start, end=end)
    assert list(plain.columns) == ["value", "baseline", "scale", *sorted(feats.names())]
    assert list(frame.index) == [float(t) for t in TIMES[150:201]]
    assert frame.index.is_monotonic_increasing
    ii = np.full(51, 1)
    tt = np.arange(150, 201)
    matrix = feats.matrix("down", (ii, tt))
    np.testing.assert_allclose(frame[list(feats.names())].to_numpy(), matrix, rtol=1e-12)
    np.testing.assert_allclose(frame["value"].to_numpy(), feats.value[1, 150:201], rtol=1e-12)
    np.testing.assert_allclose(frame["scale"].to_numpy(), feats.scale[1, 150:201], rtol=1e-12)


def test_read_features_of_an_unknown_series_is_empty(store):
    store.write_features(METRIC, LABELS, TIMES, features(), "up")

    frame = store.read_features('latency_p99{app="nope"}')

    assert frame.empty


def test_a_mask_limits_the_rows_written(engine, store):
    feats = features()
    mask = np.zeros_like(feats.ready)
    mask[0, -10:] = True

    assert store.write_features(METRIC, LABELS, TIMES, feats, "up", mask) == 10
    assert count(engine, tables.features) == 10


def test_prune_features_deletes_only_older_rows(engine, store):
    feats = features()
    store.write_features(METRIC, LABELS, TIMES, feats, "up")
    cut = TIMES[200]
    older = int(feats.ready[:, :200].sum())

    assert store.prune_features(cut) == older
    frame = store.read_features(series_key(METRIC, LABELS[0]))
    assert frame.index.min() == cut


def test_series_key_escapes_label_values_so_keys_never_collide(store):
    tricky = {"path": 'a"b\\c\nd', "app": "x"}
    assert series_key("m", tricky) == 'm{app="x",path="a\\"b\\\\c\\nd"}'
    assert series_key("m", {}) == "m"
    injected = {"a": 'x",b="y'}
    plain = {"a": "x", "b": "y"}
    assert series_key("m", injected) != series_key("m", plain)

    feats = features(n_series=3)
    store.write_features("m", [tricky, injected, plain], TIMES, feats, "up")

    for i, labels in enumerate((tricky, injected, plain)):
        frame = store.read_features(series_key("m", labels))
        assert len(frame) == int(feats.ready[i].sum())
        np.testing.assert_allclose(frame["value"].to_numpy(), feats.value[i][feats.ready[i]])


# -- anomalies --------------------------------------------------------------------------------


def result(anomalous: bool, *, app: str = "api", score: float = 0.91, **kw) -> SeriesResult:  # type: ignore[no-untyped-def]
    return SeriesResult(
        metric="success_rate",
        labels={"app": app, "namespace": "shop"},
        status="ok",
        value=0.71,
        baseline=0.995,
        score=score,
        anomalous=anomalous,
        reasons=kw.pop("reasons", [Reason("level_shift", "15m", -7.25, -0.285, 4.0)]),
        model_version="success_rate@3",
        observed_at=T0,
        started_at=T0 - 300.0,
        **kw,
    )


def test_record_anomalies_stores_only_the_anomalous_with_reasons_and_model(store):
    quiet = result(False, app="web", reasons=[])

    assert store.record_anomalies([result(True), quiet]) == 1

    rows = store.anomalies()
    assert len(rows) == 1
    row = rows[0]
    assert row["series"] == 'success_rate{app="api",namespace="shop"}'
    assert row["metric"] == "success_rate"
    assert row["labels"] == {"app": "api", "namespace": "shop"}
    assert row["ts"] == T0 and row["started_at"] == T0 - 300.0
    assert row["score"] == pytest.approx(0.91) and row["value"] == pytest.approx(0.71)
    assert row["reasons"] == [
        {
            "reason": "level_shift",
            "window": "15m",
            "zscore": -7.25,
            "delta": -0.285,
            "threshold": 4.0,
        }
    ]
    assert row["model_version"] == "success_rate@3"


def test_record_anomalies_is_idempotent_per_series_and_time(engine, store):
    store.record_anomalies([result(True)])
    store.record_anomalies([result(True, score=0.97)])

    assert count(engine, tables.anomalies) == 1
    assert store.anomalies()[0]["score"] == pytest.approx(0.97)

    later = result(True)
    later.observed_at = T0 + 60.0
    store.record_anomalies([later])
    assert count(engine, tables.anomalies) == 2
    assert [r["ts"] for r in store.anomalies(since=T0 + 1)] == [T0 + 60.0]


def test_record_anomalies_with_nothing_anomalous_writes_nothing(engine, store):
    assert store.record_anomalies([result(False), result(False, app="web")]) == 0
    assert count(engine, tables.anomalies) == 0


def test_non_finite_numbers_in_reasons_are_stored_as_null(store):
    """PostgreSQL's JSONB refuses NaN and Infinity; they must not break the write."""
    odd = Reason("volatility", "1h", math.inf, math.nan, 3.0)

    assert store.record_anomalies([result(True, reasons=[odd], score=math.nan)]) == 1

    row = store.anomalies()[0]
    assert row["score"] is None
    assert row["reasons"] == [
        {"reason": "volatility", "window": "1h", "zscore": None, "delta": None, "threshold": 3.0}
    ]
