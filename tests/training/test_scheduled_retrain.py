"""The nightly retrain inside the service: AIOPS_RETRAIN_CRON schedules it, a held lock skips it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import build_detector
from detector.service import make_scheduler, scheduled_retrain
from feature_store.locks import Lease
from training.train import retrain

QUERY = Query(name="lat", promql="up", direction="up")


def detector(tmp_path: Path, **kw):
    settings = load_settings(
        metrics=None,
        config=None,
        database_url=f"sqlite:///{tmp_path}/aiops.db",
        prom_url="http://127.0.0.1:9",
        prom_retries=0,
        **kw,
    )
    return build_detector(settings, queries=[QUERY], registry=CollectorRegistry())


def sample(det, name: str, **labels) -> float | None:
    return det.registry.get_sample_value(name, labels or None)


def test_the_cron_setting_schedules_the_retrain(tmp_path):
    det = detector(tmp_path, retrain_cron="30 2 * * 1-5")
    job = make_scheduler(det, retrain).get_job("retrain")
    assert job is not None
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "2", "1-5")
    assert (
        make_scheduler(detector(tmp_path, retrain_cron="off"), retrain).get_job("retrain") is None
    )
    # the detector service alone (no retrain handed to it by the composition root) has none
    assert make_scheduler(det).get_job("retrain") is None


def test_a_retrain_that_finds_the_lock_held_is_skipped_and_counted(tmp_path):
    det = detector(tmp_path)
    lease = Lease(det.engine, "train").acquire()
    try:
        scheduled_retrain(det, retrain)
    finally:
        lease.release()
    assert sample(det, "aiops_detector_retrains_total", result="skipped") == 1.0


def test_a_retrain_without_prometheus_is_partial_and_never_raises(tmp_path):
    det = detector(tmp_path)
    scheduled_retrain(det, retrain)  # Prometheus at 127.0.0.1:9 does not answer
    assert sample(det, "aiops_detector_retrains_total", result="partial") == 1.0


def test_the_services_the_commands_build_get_the_nightly_retrain(tmp_path):
    """``aiops detect`` and ``aiops demo up`` build the detector through aiops.wiring: its
    service gets training's retrain, which the detector package never imports."""
    from aiops import wiring

    det = detector(tmp_path)
    assert wiring.detector_app(det).state.retrain is retrain
    assert make_scheduler(det, wiring.detector_app(det).state.retrain).get_job("retrain")
