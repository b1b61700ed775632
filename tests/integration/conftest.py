"""Real processes for integration tests: the demo workload, Prometheus, the detector."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from demo.prometheus import (
    PROMETHEUS,
    PROMTOOL,
    PrometheusProcess,
    backfill,
    free_port,
    scrape_config,
)
from demo.server import DemoServer, serve
from demo.workload import Workload
from tests.conftest import require_binary

HISTORY_HOURS = 4.0
#: Incidents already under way when the test starts (inside the backfilled history).
FAULTS = [
    ("checkout", "latency_shift", 3600.0, -1200.0),
    ("payments", "error_burst", 3600.0, -900.0),
]


def poll(check: Callable[[], Any], *, timeout: float, every: float = 0.25, what: str = "") -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check}: {last_exc}")


@dataclass
class DemoStack:
    workload: Workload
    server: DemoServer
    prometheus: PrometheusProcess
    history: Path
    started: float


@pytest.fixture(scope="session")
def binaries() -> tuple[str, str]:
    return require_binary(PROMETHEUS), require_binary(PROMTOOL)


@pytest.fixture(scope="session")
def demo_history(binaries, tmp_path_factory) -> tuple[Workload, Path, float]:
    """A workload with incidents in its last minutes, and its history as OpenMetrics. Its
    apps are independent (no dependency map): each fault shows in its own app only."""
    now = time.time()
    workload = Workload(seed=7, start=now - HISTORY_HOURS * 3600, calls={})
    for app, kind, duration, offset in FAULTS:
        workload.inject(app, kind, start=now + offset, duration=duration)
    path = tmp_path_factory.mktemp("history") / "history.om"
    workload.write_openmetrics(path, end=now)
    return workload, path, now


def start_prometheus(
    workdir: Path, history: Path, jobs: dict[str, list[str]], binaries: tuple[str, str], **kw: Any
) -> PrometheusProcess:
    backfill(history, workdir / "data", promtool=binaries[1])
    prom = PrometheusProcess(workdir, scrape_config(jobs, interval="1s"), binary=binaries[0], **kw)
    return prom.start()


@pytest.fixture(scope="module")
def detector_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def demo_stack(binaries, demo_history, detector_port, tmp_path_factory) -> Iterator[DemoStack]:
    """Prometheus (backfilled) scraping the live demo workload and a detector port."""
    workload, history, started = demo_history
    server, _ = serve(workload)
    host, port = server.server_address[:2]
    jobs = {"demo": [f"{host}:{port}"], "aiops-detector": [f"127.0.0.1:{detector_port}"]}
    prom = start_prometheus(tmp_path_factory.mktemp("prom"), history, jobs, binaries)
    try:
        yield DemoStack(workload, server, prom, history, started)
    finally:
        prom.stop()
        server.stop()


class ServiceThread:
    """The detector's HTTP app (with its scheduler) in a thread, stopped like SIGTERM would."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        poll(lambda: self.server.started, timeout=30, what="detector http server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


#: the settings' prefixes: a subprocess of a test inherits none of them
SETTING_PREFIXES = ("AIOPS_", "PROM_", "RUNBOOK_", "RUNBOOKS_", "SLACK_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any setting of the service, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update(extra)
    return env


def detector_env(**extra: str) -> dict[str, str]:
    """The environment of an ``aiops`` subprocess: no inherited settings, a fresh database."""
    db = f"sqlite:///{tempfile.mkdtemp(prefix='aiops-db-')}/aiops.db"
    return clean_env(**{"AIOPS_DATABASE_URL": db, **extra})


def aiops_command() -> list[str]:
    exe = shutil.which("aiops")
    return [exe] if exe else [sys.executable, "-m", "aiops"]


def run_aiops(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*aiops_command(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def demo_audit(webhook_url: str, workdir: Path) -> list[dict]:
    """A demo webhook's whole audit, oldest first, read with the token the demo wrote to
    ``<workdir>/read-token`` (as the README tells a user to)."""
    import httpx

    token = (workdir / "read-token").read_text().strip()
    r = httpx.get(
        f"{webhook_url}/audit",
        params={"n": 5000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["rows"]))
