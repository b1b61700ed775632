"""A real Prometheus process on loopback, for the demo, the tests and the benchmarks.

It runs Debian's ``/usr/bin/prometheus`` with a generated config and its own data
directory, can be backfilled with ``promtool tsdb create-blocks-from openmetrics``
before it starts, and is stopped (or killed) by its owner.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


class ProcessError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL: for every process a runner started."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_http_ok(
    what: str,
    url: str,
    proc: subprocess.Popen | None,
    log_tail: Callable[[], str],
    timeout: float,
    *,
    interval: float = 0.1,
    probe_timeout: float = 1.0,
) -> None:
    """Poll ``url`` until it answers 200: for a server process a runner just started.

    ``ProcessError`` (with ``log_tail()``) if ``proc`` exits first or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessError(f"{what} exited with {proc.returncode}: {log_tail()}")
        try:
            if httpx.get(url, timeout=probe_timeout).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise ProcessError(f"{what} not ready after {timeout:g}s: {log_tail()}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on ``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def find_binary(name: str, default: str) -> str | None:
    """``name`` on PATH, else ``default`` if that is an executable file."""
    found = shutil.which(name)
    if found:
        return found
    return default if Path(default).is_file() and os.access(default, os.X_OK) else None


def scrape_config(
    jobs: dict[str, list[str]],
    *,
    interval: str = "15s",
    rule_files: list[str] | None = None,
    alertmanagers: list[str] | None = None,
) -> str:
    """Prometheus YAML scraping ``jobs`` (job name → ``host:port`` targets)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = rule_files
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    return yaml.safe_dump(config, sort_keys=False)


def backfill(openmetrics: Path, data_dir: Path, *, promtool: str = PROMTOOL) -> None:
    """Write TSDB blocks for the samples in ``openmetrics`` into ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ProcessError(f"promtool backfill failed: {' | '.join(tail)}")


class PrometheusProcess:
    """One Prometheus server on 127.0.0.1 with its own config file and data directory."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        port: int | None = None,
        binary: str = PROMETHEUS,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        # absolute once, here: the process runs inside this folder, so a relative path
        # in its arguments would be taken twice
        self.workdir = Path(workdir).expanduser().resolve()
        self.config = config
        self.port = port or free_port()
        self.binary = binary
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir = self.workdir / "data"
        self.config_file = self.workdir / "prometheus.yml"
        self.log_file = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config)
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=30d",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_http_ok(
            "prometheus",
            f"{self.url}/-/ready",
            self.proc,
            self.log_tail,
            timeout,
            interval=0.2,
            probe_timeout=2,
        )

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(
                self.log_file.read_text(errors="replace").strip().splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query result (vector), for tests and the demo's checks."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
