"""Helpers of the adversarial suite: the webhook harness of tests/runbooks, real servers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from aiops.core.signing import signed_headers
from demo.prometheus import free_port, stop_process, wait_http_ok
from tests.integration.conftest import aiops_command, clean_env
from tests.runbooks.conftest import (  # noqa: F401
    RECORDER,
    SECRET,
    TOKEN,
    anomaly,
    make_hook,
    served,
)


class Burst:
    """Signed anomaly events of one app (one pod each), posted from many threads; the
    decisions, in the order they were answered."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.answers: list[str] = []
        self._lock = threading.Lock()

    def post(self, http: httpx.Client, url: str, i: int) -> str:
        e = anomaly(f"{self.prefix}-{i}")
        e["labels"]["pod"] = f"checkout-{i}"
        body = json.dumps(e).encode()
        r = http.post(f"{url}/anomalies", content=body, headers=signed_headers(SECRET, body))
        assert r.status_code == 200, r.text
        decision = r.json()["decision"]
        with self._lock:
            self.answers.append(decision)
        return decision


def command_policy(path: Path, trace: Path, *, match: str = "latency_p99") -> Path:
    """A policy whose action appends the app to ``trace`` (one line per execution)."""
    argv = [sys.executable, "-c", RECORDER, str(trace), "{app}"]
    path.write_text(
        f"default:\n  - match: {match}\n    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
    )
    return path


class WebhookProcess:
    """``aiops webhook`` as its own process (so it can be killed -9 or run twice)."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = clean_env()
        base.update(
            RUNBOOK_WEBHOOK_SECRET=SECRET,
            RUNBOOK_ALERTMANAGER_TOKEN=TOKEN,
            RUNBOOK_RATE_LIMIT="100000",
            AIOPS_LOG_LEVEL="WARNING",
        )
        base.update(env)
        self.env = base
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WebhookProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "webhook.log").open("ab")
        cmd = [*aiops_command(), "webhook", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_http_ok(
            "webhook", f"{self.url}/healthz", self.proc, self.log_tail, timeout, interval=0.05
        )
        return self

    def log(self) -> str:
        path = self.workdir / "webhook.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self) -> str:
        return self.log()[-2000:]

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        stop_process(self.proc, 20)


def post_signed(client: httpx.Client, url: str, event: dict[str, Any]) -> httpx.Response:
    body = json.dumps(event).encode()
    return client.post(f"{url}/anomalies", content=body, headers=signed_headers(SECRET, body))
