"""detect_batch works in chunks of series, on threads, and reuses a fresh forest: none of
that may change a single result."""

from __future__ import annotations

import math

import numpy as np
import pytest

import detector.pipeline as pipeline
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.features import past_slices
from detector.pipeline import detect_batch
from detector.scoring import BaselineModelProvider
from detector.source import SeriesBatch

T, DAY = 361, 1440
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def batch_and_past() -> tuple[SeriesBatch, np.ndarray]:
    n = 90
    rng = np.random.default_rng(4)
    t = np.arange(-3 * DAY - 1, T + 1)
    level = rng.uniform(1, 100, n)[:, None]
    amp = (rng.uniform(0, 0.5, n) * (rng.random(n) < 0.6))[:, None]
    full = level * (1 + amp * np.sin(2 * np.pi * t / DAY)) * (1 + rng.normal(0, 0.02, (n, len(t))))
    full[rng.random(full.shape) < 0.01] = np.nan
    full[:10, -40:] *= 1.4  # level shifts
    full[16:20, -40:] *= 0.6  # and drops
    full[10:16, -30:] += rng.normal(0, 0.3, (6, 30)) * level[10:16]  # volatility
    full[20:23, :-70] = np.nan  # warming up
    x = full[:, -T - 1 : -1].copy()
    past = past_slices(full[:, :-1], DAY, 3)[:, :, -(T + 2) :]
    labels = [{"app": f"a{i:03d}"} for i in range(n)]
    return SeriesBatch("q", NOW - 60 * (T - 1), 60.0, labels, x), np.ascontiguousarray(past)


def run(batch, past, *, chunk, threads, direction="both"):
    settings = load_settings(metrics=None, config=None)
    query = Query(name="q", promql="x", direction=direction, labels=("app",))
    provider = BaselineModelProvider(refit_seconds=3600)
    old = pipeline.CHUNK_SERIES
    pipeline.CHUNK_SERIES = chunk
    try:
        out, timings = [], {}
        # a fit, a reuse with two series held anomalous, one without the seasonal slices
        for k, (p, active) in enumerate([(past, None), (past, {(("app", "a012"),)}), (None, None)]):
            results = detect_batch(
                batch,
                query,
                settings,
                provider,
                now=NOW + k,
                past=p,
                active=active,
                timings=timings,
                threads=threads,
            )
            out.append([r.as_dict() | {"features": r.features, "scale": r.scale} for r in results])
        return out, timings
    finally:
        pipeline.CHUNK_SERIES = old


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("direction", ["both", "down"])
def test_chunks_and_threads_change_nothing(batch_and_past, direction):
    batch, past = batch_and_past
    whole, timings = run(batch, past, chunk=1000, threads=1, direction=direction)
    assert sum(r["anomalous"] for r in whole[0]) >= 5
    assert any(r["status"] == "warming_up" for r in whole[0])
    assert set(timings) == {"features", "scoring", "explanation"}
    for chunk, threads in [(7, 1), (32, 2)]:
        parts, _ = run(batch, past, chunk=chunk, threads=threads, direction=direction)
        assert same(whole, parts), (chunk, threads)


def test_a_fresh_forest_is_reused_without_building_training_rows(batch_and_past, monkeypatch):
    batch, past = batch_and_past
    settings = load_settings(metrics=None, config=None)
    query = Query(name="q", promql="x", direction="both", labels=("app",))
    provider = BaselineModelProvider(refit_seconds=3600)
    fits = []
    real = provider.model_for

    def model_for(name, train, *, now):
        fits.append(len(train))
        return real(name, train, now=now)

    monkeypatch.setattr(provider, "model_for", model_for)
    first = detect_batch(batch, query, settings, provider, now=NOW, past=past)
    again = detect_batch(batch, query, settings, provider, now=NOW + 60, past=past)
    assert len(fits) == 1 and fits[0] > 1000
    assert [r.score for r in first] == [r.score for r in again]
    detect_batch(batch, query, settings, provider, now=NOW + 3600, past=past)
    assert len(fits) == 2  # stale: refitted


def test_features_of_a_series_do_not_depend_on_the_others(batch_and_past):
    """Plain and seasonal series mixed in one call, or each alone: the same numbers."""
    from dataclasses import fields

    from detector.features import Features, compute_features
    from detector.pipeline import feature_spec

    batch, past = batch_and_past
    settings = load_settings(metrics=None, config=None)
    spec = feature_spec(Query(name="q", promql="x"), settings, batch.step)
    together = compute_features(batch.values, spec, past)
    seasonal = together.extra["seasonal"].any(axis=1)
    assert 0 < seasonal.sum() < len(seasonal)  # both kinds are in the batch
    for i in (0, 11, 30, int(np.argmax(seasonal)), int(np.argmin(seasonal))):
        alone = compute_features(batch.values[i : i + 1], spec, past[:, i : i + 1])
        for fld in fields(Features):
            a, b = getattr(together, fld.name), getattr(alone, fld.name)
            if fld.name == "extra":
                a = {k: v for k, v in a.items() if v[i].any()}
            if isinstance(a, dict):
                assert a.keys() == b.keys(), (i, fld.name)
                for k in a:
                    np.testing.assert_array_equal(a[k][i], b[k][0])
            elif isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a[i], b[0])


@pytest.mark.parametrize("ratio", [0.75, 1.0])
def test_relaxed_verdict_of_the_newest_columns_only(batch_and_past, ratio):
    from detector.features import compute_features
    from detector.pipeline import feature_spec
    from detector.verdict import Thresholds, judge

    batch, past = batch_and_past
    settings = load_settings(metrics=None, config=None)
    spec = feature_spec(Query(name="q", promql="x"), settings, batch.step)
    f = compute_features(batch.values, spec, past)
    # more reasons fire; without hysteresis only far points hold: a lower spike level
    th = Thresholds(z_thresh=2.0, resolve_ratio=ratio, spike_z=7.0 if ratio < 1 else 3.0)
    scores = np.full(f.ready.shape, np.nan)
    full = judge(f, th, "both", scores, spec.longest)
    tail = judge(f, th, "both", scores, spec.longest, relaxed_columns=f.short_points)
    assert full.relaxed[:, -1].any()
    np.testing.assert_array_equal(full.strict, tail.strict)
    np.testing.assert_array_equal(full.relaxed[:, -1], tail.relaxed[:, -1])
    for a, b in zip(full.relaxed_evidence, tail.relaxed_evidence, strict=True):
        np.testing.assert_array_equal(a.fired[:, -1], b.fired[:, -1])
        np.testing.assert_array_equal(a.zscore[:, -1], b.zscore[:, -1])
