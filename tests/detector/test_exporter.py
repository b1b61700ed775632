"""Exporter and cycle state: gauges, reasons, and removal of ended reasons and vanished series."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiops.core.errors import ConfigError, QueryError
from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import Detector
from detector.features import FeatureSpec, compute_features
from detector.source import SeriesBatch, align_end

T = 361
STEP = 60.0


class ScriptedSource:
    """Stands in for Prometheus in unit tests: returns prepared batches, or raises."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[list[dict[str, str]], np.ndarray]] = {}
        self.error: QueryError | None = None

    def fetch(self, query: Query, *, end: float, lookback: float, step: float) -> SeriesBatch:
        # a Prometheus started just now: the windows of earlier days (the seasonal
        # history, see detector.season) hold nothing
        self.latest = max(getattr(self, "latest", end), end)
        if end < self.latest - 3600:
            return SeriesBatch(query.name, end - lookback, step, [], np.empty((0, 0)))
        if self.error is not None:
            raise self.error
        labels, values = self.rows[query.name]
        start = align_end(end, step) - step * (values.shape[1] - 1)
        return SeriesBatch(query.name, start, step, list(labels), values.copy())

    def check(self, query: Query) -> None:
        pass


def series(seed: int, shift: float = 0.0) -> np.ndarray:
    x = 0.2 + np.random.default_rng(seed).normal(0, 0.004, T)
    x[-30:] += shift
    return x


def scripted_detector(
    monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> tuple[Detector, ScriptedSource, CollectorRegistry]:
    """A detector of one query, ``latency_p99`` by ``app``, reading a ``ScriptedSource``,
    with its own registry; ``settings`` only (no metrics or config file of the environment)."""
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    query = Query(name="latency_p99", promql="x", direction="up", labels=("app",))
    source = ScriptedSource()
    registry = CollectorRegistry()
    det = Detector(load_settings(**settings), queries=[query], source=source, registry=registry)
    return det, source, registry


@pytest.fixture
def setup(monkeypatch):
    return scripted_detector(monkeypatch, interval_seconds=60, stale_after_seconds=300)


def val(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_gauges_reasons_and_removal(setup):
    det, source, reg = setup
    labels = [{"app": "checkout"}, {"app": "search"}]
    source.rows["latency_p99"] = (labels, np.stack([series(1, shift=0.1), series(2)]))
    now = 1_700_000_000.0
    report = det.run_cycle(now)
    assert report.outcome == "ok"
    bad = {"metric": "latency_p99", "app": "checkout"}
    good = {"metric": "latency_p99", "app": "search"}
    assert val(reg, "aiops_anomaly_current", **bad) == 1
    assert val(reg, "aiops_anomaly_current", **good) == 0
    assert val(reg, "aiops_anomaly_info", **bad, reason="level_shift") == 1
    assert val(reg, "aiops_anomaly_info", **good, reason="level_shift") is None
    # calibrated: at least 1 exactly while anomalous; the forest's own score beside it
    assert val(reg, "aiops_anomaly_score", **bad) >= 1
    assert 0 <= val(reg, "aiops_anomaly_score", **good) < 1
    assert 0 < val(reg, "aiops_anomaly_forest_score", **bad) <= 1
    assert 0 < val(reg, "aiops_anomaly_forest_score", **good) <= 1
    assert val(reg, "aiops_anomaly_zscore", **bad, window="15m") > 3
    assert val(reg, "aiops_anomaly_delta", **bad) == pytest.approx(0.1, rel=0.2)
    assert val(reg, "aiops_detector_series_scored", query="latency_p99") == 2
    assert val(reg, "aiops_detector_last_success_timestamp_seconds") == now
    (res,) = [r for r in report.results["latency_p99"] if r.anomalous]
    assert res.started_at == res.observed_at

    # the incident ends: its reason label set is removed, current goes to 0
    source.rows["latency_p99"] = (labels, np.stack([series(1), series(2)]))
    det.run_cycle(now + 60)
    assert val(reg, "aiops_anomaly_current", **bad) == 0
    assert val(reg, "aiops_anomaly_info", **bad, reason="level_shift") is None

    # a series that vanished from Prometheus vanishes from every gauge
    source.rows["latency_p99"] = (labels[1:], series(2)[None, :])
    det.run_cycle(now + 120)
    for name in ("aiops_anomaly_current", "aiops_anomaly_score", "aiops_anomaly_delta"):
        assert val(reg, name, **bad) is None
    assert val(reg, "aiops_anomaly_zscore", **bad, window="5m") is None
    assert val(reg, "aiops_anomaly_current", **good) == 0


def test_series_without_recent_samples_is_gone(setup):
    det, source, reg = setup
    x = series(3)
    x[-10:] = np.nan  # stopped being scraped ten minutes ago
    source.rows["latency_p99"] = ([{"app": "old"}], x[None, :])
    det.run_cycle(1_700_000_000.0)
    assert val(reg, "aiops_anomaly_current", metric="latency_p99", app="old") is None


def test_warming_up_series_is_exported_but_not_scored(setup):
    det, source, reg = setup
    x = np.full(T, np.nan)
    x[-40:] = 0.2
    source.rows["latency_p99"] = ([{"app": "new"}], x[None, :])
    report = det.run_cycle(1_700_000_000.0)
    (r,) = report.results["latency_p99"]
    assert r.status == "warming_up"
    assert val(reg, "aiops_anomaly_current", metric="latency_p99", app="new") == 0
    assert val(reg, "aiops_anomaly_score", metric="latency_p99", app="new") is None
    assert val(reg, "aiops_detector_series_warming_up", query="latency_p99") == 1


def test_prometheus_errors_are_counted_and_gauges_dropped_when_stale(setup):
    det, source, reg = setup
    source.rows["latency_p99"] = ([{"app": "a"}], series(4, shift=0.1)[None, :])
    now = 1_700_000_000.0
    det.run_cycle(now)
    assert det.health(now)[0]
    source.error = QueryError("latency_p99", "unreachable", "cannot connect")
    report = det.run_cycle(now + 60)
    assert report.outcome == "failed"
    assert (
        val(reg, "aiops_detector_query_errors_total", query="latency_p99", kind="unreachable") == 1
    )
    assert val(reg, "aiops_detector_prometheus_up") == 0
    # within the staleness limit the last verdict stays exported
    assert val(reg, "aiops_anomaly_current", metric="latency_p99", app="a") == 1
    healthy, body = det.health(now + 60)
    assert healthy and body["queries"]["latency_p99"]["error"].startswith("unreachable")
    det.run_cycle(now + 400)
    assert val(reg, "aiops_anomaly_current", metric="latency_p99", app="a") is None
    healthy, body = det.health(now + 400)
    assert not healthy and body["status"] == "stale"
    # Prometheus is back: everything recovers without a restart
    source.error = None
    det.run_cycle(now + 460)
    assert det.health(now + 460)[0]
    assert val(reg, "aiops_anomaly_current", metric="latency_p99", app="a") == 1
    assert val(reg, "aiops_detector_prometheus_up") == 1


def test_reserved_label_names_are_renamed():
    from detector.source import keep_labels

    assert keep_labels({"__name__": "x", "metric": "m", "app": "a"}, None) == {
        "exported_metric": "m",
        "app": "a",
    }
    assert keep_labels({"app": "a", "pod": "p"}, ("app", "namespace")) == {
        "app": "a",
        "namespace": "",
    }


@pytest.mark.parametrize("ratio", [0.75, 1.0])
def test_an_ongoing_anomaly_ends_only_below_the_relaxed_thresholds(monkeypatch, ratio):
    """Hysteresis (AIOPS_RESOLVE_RATIO 0.75): z 2.6 does not start an anomaly (threshold 3)
    but holds one (3 × 0.75). Without it (1, the default) the anomaly ends there.

    The "back in the band" end is off here (AIOPS_RESOLVE_POINTS=0): each cycle replaces
    the last 30 points, so the band has followed the shift and would end the episode
    (tests/detector/test_episodes.py covers that rule)."""
    det, source, reg = scripted_detector(
        monkeypatch,
        interval_seconds=60,
        stale_after_seconds=300,
        resolve_points=0,
        resolve_ratio=ratio,
    )
    labels = [{"app": "a"}]
    now = 1_700_000_000.0
    bad = {"metric": "latency_p99", "app": "a"}

    def cycle(shift: float, at: float) -> float:
        x = series(5)
        x[-30:] += shift
        source.rows["latency_p99"] = (labels, x[None, :])
        det.run_cycle(at)
        return val(reg, "aiops_anomaly_current", **bad)

    # the shift that puts the weaker of the 5m/15m z-scores at 2.6 for this noise
    f = compute_features(series(5)[None, :], FeatureSpec(step=STEP, baseline=300 * STEP))
    noise = min(f.z["5m"][0, -1], f.z["15m"][0, -1])
    sd = float(f.scale[0, -1])
    assert cycle((2.6 - noise) * sd, now) == 0  # never starts below the threshold
    assert cycle(10 * sd, now + 60) == 1
    if ratio == 1.0:
        assert cycle((2.6 - noise) * sd, now + 120) == 0  # no hysteresis: over
        return
    assert cycle((2.6 - noise) * sd, now + 120) == 1  # held
    assert val(reg, "aiops_anomaly_info", **bad, reason="level_shift") == 1
    assert cycle((1.5 - noise) * sd, now + 180) == 0  # ended
    assert val(reg, "aiops_anomaly_info", **bad, reason="level_shift") is None


def test_two_shards_cover_every_series_exactly_once():
    """AIOPS_SHARD=i/n: replicas split the series by a stable hash of their key."""
    labels = [{"app": f"app{i}"} for i in range(40)]
    values = np.stack([series(i) for i in range(40)])
    query = Query(name="latency_p99", promql="x", direction="up", labels=("app",))
    owned = []
    for shard in ("0/2", "1/2"):
        source = ScriptedSource()
        source.rows["latency_p99"] = (labels, values)
        det = Detector(
            load_settings(shard=shard, metrics=None, config=None),
            queries=[query],
            source=source,
            registry=CollectorRegistry(),
        )
        report = det.run_cycle(1_700_000_000.0)
        owned.append({r.labels["app"] for r in report.results["latency_p99"]})
    assert owned[0] and owned[1]
    assert owned[0].isdisjoint(owned[1])
    assert owned[0] | owned[1] == {lb["app"] for lb in labels}
    # the split is stable: a new replica of shard 0 owns exactly the same series
    source = ScriptedSource()
    source.rows["latency_p99"] = (labels, values)
    again = Detector(
        load_settings(shard="0/2", metrics=None, config=None),
        queries=[query],
        source=source,
        registry=CollectorRegistry(),
    ).run_cycle(1_700_000_060.0)
    assert {r.labels["app"] for r in again.results["latency_p99"]} == owned[0]


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2", "0/0"])
def test_a_bad_shard_setting_names_the_variable(bad):
    with pytest.raises(ConfigError, match="AIOPS_SHARD"):
        load_settings(shard=bad)
