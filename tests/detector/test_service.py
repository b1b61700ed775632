"""The scheduler: cycles never overlap, missed runs coalesce, a crashing cycle is survived."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from detector.exporter import DetectorMetrics
from detector.service import make_scheduler
from tests.integration.conftest import poll


class SlowDetector:
    """Cycles that take longer than the interval; records how many run at once."""

    def __init__(self, cycle_seconds: float, fail_every: int = 0) -> None:
        self.settings = SimpleNamespace(interval_seconds=0.05)
        self.registry = CollectorRegistry()
        self.metrics = DetectorMetrics(self.registry)
        self.cycle_seconds = cycle_seconds
        self.fail_every = fail_every
        self.running = 0
        self.max_running = 0
        self.calls = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def run_cycle(self) -> None:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.max_running = max(self.max_running, self.running)
            call = self.calls
        try:
            self.release.wait(self.cycle_seconds)  # a cycle that overruns the interval
            if self.fail_every and call % self.fail_every == 0:
                raise RuntimeError("bug in a cycle")
        finally:
            with self.lock:
                self.running -= 1


def test_cycles_never_overlap_and_misfires_coalesce():
    det = SlowDetector(cycle_seconds=0.3)
    scheduler = make_scheduler(det)
    job = scheduler.get_job("detect")
    assert job.max_instances == 1 and job.coalesce is True
    started = time.monotonic()
    scheduler.start()
    try:
        poll(lambda: det.calls >= 3, timeout=20, what="three cycles")
    finally:
        scheduler.shutdown(wait=True)
    elapsed = time.monotonic() - started
    assert det.max_running == 1
    # 0.3 s cycles every 0.05 s: without coalescing dozens of runs would queue up
    assert det.calls <= elapsed / 0.3 + 2


def test_a_crashing_cycle_does_not_stop_the_schedule():
    det = SlowDetector(cycle_seconds=0.0, fail_every=2)
    scheduler = make_scheduler(det)
    scheduler.start()
    try:
        poll(lambda: det.calls >= 5, timeout=20, what="cycles after a crash")
    finally:
        scheduler.shutdown(wait=True)
    crashed = det.registry.get_sample_value("aiops_detector_cycles_total", {"result": "crashed"})
    assert crashed >= 2
