"""A series' own spike level: a point that is rare *for this series* is a spike.

Heavy-tailed 1-minute series (request rates, CPU) reach 7 band sds every few hours; the
spike level climbs the rungs AIOPS_SPIKE_Z × 1.4**k until at most 4 of the last 2,000
points reached it. Backtests compute it from the history they replay; the live detector,
whose lookback is short, takes the one the nightly retrain stored with the model.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.catalogue import Query
from detector.features import FeatureSpec
from detector.pipeline import Thresholds, detect_batch
from detector.scoring import BaselineModelProvider
from detector.settings import load_settings
from detector.source import SeriesBatch, series_key
from detector.verdict import (
    SPIKE_MEMORY,
    SPIKE_MIN_KNOWN,
    SPIKE_RUNG,
    latest_spike_level,
    spike_levels,
)
from training.backtest import replay

BASE = 7.0


def test_the_level_is_the_base_until_the_history_is_long_enough_then_the_lowest_rare_rung():
    n = 4000
    z = np.zeros((2, n))
    z[1, 100:3000:100] = 8.0  # 29 points of 8 sds, every 100 points
    level = spike_levels(z, BASE)
    assert (level[:, :SPIKE_MIN_KNOWN] == BASE).all()  # too short a history: the base
    assert (level[0] == BASE).all()  # a quiet series keeps the base
    # once more than 4 of the last 2,000 points reached 7 (and 8 < 9.8), the next rung
    assert level[1, 2500] == pytest.approx(BASE * SPIKE_RUNG)
    # and the level comes down once all but 4 of them have left the memory
    longer = np.concatenate([z, np.zeros((2, 3000))], axis=1)
    assert spike_levels(longer, BASE)[1, 2500 + SPIKE_MEMORY + 1] == BASE
    assert level[1, -1] == pytest.approx(BASE * SPIKE_RUNG)
    # the level after the history: what training stores
    after = latest_spike_level(z, BASE)
    assert after.tolist() == pytest.approx([BASE, BASE * SPIKE_RUNG])
    assert np.isnan(latest_spike_level(z[:, :500], BASE)).all()


def heavy(n: int, seed: int = 2) -> np.ndarray:
    """A 1-minute series with a 7.5-sd point every 150 minutes."""
    rng = np.random.default_rng(seed)
    x = 100 + rng.normal(0, 1.0, n)
    x[300::150] += 7.5
    return x


def test_a_backtest_stops_calling_a_series_usual_tail_a_spike_but_keeps_a_rare_one():
    n = 6000
    x = heavy(n)
    x[5000] += 40.0  # forty sds: rare for this series too
    spec = FeatureSpec(step=60.0)
    r = replay(x, spec, Thresholds(), "both")
    (spike,) = [ev for ev in r.evidence if ev.reason == "spike"]
    usual = [t for t in range(2000, n, 1) if (t - 300) % 150 == 0 and t != 5000]
    z = r.features.band_z[0, usual]
    assert (z >= BASE).sum() >= 15  # at the base level most of them would be spikes
    # at its own level only the rare top of its usual tail is (at most 4 in 2,000 points)
    assert spike.fired[0, usual].sum() <= 2
    assert r.anomalous[0, 5000] and spike.fired[0, 5000]
    assert spike.threshold[0, 5000] == pytest.approx(BASE * SPIKE_RUNG)
    # early on (too little history for the series' own level) the base applies
    early = [t for t in range(300, 1000, 150) if spike.fired[0, t]]
    assert early


def test_the_live_detector_takes_the_level_its_trained_model_stored():
    n = 361
    rng = np.random.default_rng(5)
    values = 100 + rng.normal(0, 1.0, (2, n))
    values[:, -1] += 11.0  # eleven sds: a spike at the base (7), not at 13.7
    labels = [{"app": "quiet"}, {"app": "noisy"}]
    batch = SeriesBatch("lat", 1_700_000_000.0 - 60 * (n - 1), 60.0, labels, values)
    query = Query(name="lat", promql="x", direction="up", labels=("app",), seasonality="none")
    settings = load_settings(metrics=None, config=None)

    class Trained(BaselineModelProvider):
        def spike_levels(self, name: str) -> dict[str, float]:
            return {series_key(name, {"app": "noisy"}): BASE * SPIKE_RUNG**2}

    plain = detect_batch(
        batch, query, settings, BaselineModelProvider(refit_seconds=3600), now=1.7e9
    )
    trained = detect_batch(batch, query, settings, Trained(refit_seconds=3600), now=1.7e9)
    by = {r.labels["app"]: r for r in plain}
    assert by["quiet"].anomalous and by["noisy"].anomalous
    by = {r.labels["app"]: r for r in trained}
    assert by["quiet"].anomalous and [x.reason for x in by["quiet"].reasons] == ["spike"]
    assert not by["noisy"].anomalous
