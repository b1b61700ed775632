"""Model files the live detector must refuse: a pickle payload promoted as a model, an
untrusted skops type, another scikit-learn version. Each time the series is scored by the
baseline model, the refusal is counted by reason, and the payload never runs.

(The registry's own refusals and kill -9 during a save are proven in
tests/feature_store/test_registry.py.)"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import skops.io as sio
from sqlalchemy import update

from feature_store import tables
from feature_store.registry import ModelRegistry
from tests.detector.test_registry_models import KEY, QUERY, by_app, promote_trained, world
from tests.feature_store.test_registry import Custom, Payload

__all__ = ["world"]  # the fixture, used below by name


def _promote_blob(det, blob: bytes):
    """A promoted version of checkout's model whose artifact is ``blob`` (own checksum)."""
    return ModelRegistry(det.engine).save(
        series=KEY,
        metric=QUERY.name,
        labels={"app": "checkout"},
        blob=blob,
        feature_names=["z_5m", "z_15m", "z_1h", "trend_z", "log_vol_ratio", "pct_change"],
        params={},
        train_start=0.0,
        train_end=1.0,
        n_samples=300,
        evaluation={},
        promote=True,
    )


def _refusals(det, reason: str) -> float | None:
    return det.registry.get_sample_value(
        "aiops_detector_model_load_failures_total", {"query": QUERY.name, "reason": reason}
    )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: pickle.dumps(Payload(tmp / "sentinel")), "not_skops"),
        (lambda tmp: sio.dumps(Custom()), "untrusted_type"),
    ],
    ids=["pickle_payload", "untrusted_skops_type"],
)
def test_a_hostile_artifact_is_never_loaded_and_the_detector_falls_back(
    world, tmp_path, make, reason
):
    det, _, _ = world
    blob = make(tmp_path)
    _promote_blob(det, blob)
    now = time.time()
    for i in range(2):
        res = by_app(det.run_cycle(now + 60 * i))["checkout"]
        assert res.status == "ok" and np.isfinite(res.score)
        assert res.model_version.startswith("baseline-")  # the fallback scores it
    assert _refusals(det, reason) == 1  # said so in the metrics, once
    assert not (tmp_path / "sentinel").exists()  # the pickle never ran
    assert det.health()[1]["database"]["refused_models"] == 1


def test_a_model_of_another_scikit_learn_version_is_refused_and_falls_back(world):
    det, _, _ = world
    now = time.time()
    record, _, _ = promote_trained(det, seed=1, now=now)
    assert by_app(det.run_cycle(now))["checkout"].model_version == record.tag
    newer = promote_trained(det, seed=2, now=now)[0]
    t = tables.models
    with det.engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == newer.id).values(sklearn_version="0.24.2"))
    res = by_app(det.run_cycle(now + 60))["checkout"]
    assert res.model_version.startswith("baseline-")
    assert np.isfinite(res.score)
    assert _refusals(det, "sklearn_version") == 1
