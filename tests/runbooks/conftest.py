"""A webhook app on a real SQLite database, with a command action that leaves a trace."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from aiops.core.db import make_engine
from aiops.core.settings import load_settings
from aiops.core.signing import signed_headers
from demo.prometheus import free_port
from runbooks.app import create_app
from runbooks.policy import load_policy
from sql.migrate import migrate
from tests.integration.conftest import poll

SECRET = "s3cret-for-tests"
APPROVAL_SECRET = "approval-secret"
#: secrets of at least 16 characters, as the webhook requires when actions really run
TOKEN = "am-token-for-tests"
READ_TOKEN = "read-token-for-tests"
#: what a reader of /audit, /events and /console/pending sends
READ = {"Authorization": f"Bearer {READ_TOKEN}"}

#: appends one line per run to the file named by its argument: counts executions
RECORDER = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"


def policy_file(tmp_path: Path, trace: Path, *, risk: str = "low") -> Path:
    path = tmp_path / "policy.yaml"
    argv = [sys.executable, "-c", RECORDER, str(trace), "{app}"]
    path.write_text(
        "shop.checkout:\n"
        "  - match: latency_p99\n"
        "    reason: level_shift\n"
        "    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
        f"    risk: {risk}\n"
        "  - match: CheckoutDown\n"
        "    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
        "default:\n"
        "  - match: payments_errors\n"
        "    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
    )
    return path


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free loopback port (in a thread)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, timeout=20, what="webhook")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Hook:
    """The app under test with helpers to post signed events and read the audit."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.trace = tmp_path / "trace.txt"
        risk = overrides.pop("risk", "low")
        values = dict(
            metrics=None,
            config=None,
            database_url=f"sqlite:///{tmp_path}/hook.db",
            webhook_secret=SECRET,
            alertmanager_token=TOKEN,
            approval_secret=APPROVAL_SECRET,
            read_token=READ_TOKEN,
            autofix_enabled=True,
            autofix_dry_run=False,
            policy_file=policy_file(tmp_path, self.trace, risk=risk),
        )
        values.update(overrides)
        self.settings = load_settings(**values)
        self.engine = make_engine(self.settings.database_url)
        migrate(self.engine)
        self.policy = load_policy(self.settings.autofix_policy, self.settings.policy_file)
        self.registry = CollectorRegistry()
        self.app = create_app(self.settings, self.engine, self.policy, registry=self.registry)
        self.client = TestClient(self.app)
        self.client.__enter__()
        self.rem = self.app.state.remediator

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.engine.dispose()

    def runs(self) -> list[str]:
        return self.trace.read_text().splitlines() if self.trace.exists() else []

    def post_event(self, event: dict[str, Any], *, headers: dict[str, str] | None = None):
        body = json.dumps(event).encode()
        h = signed_headers(SECRET, body) if headers is None else headers
        return self.client.post("/anomalies", content=body, headers=h)

    def post_alerts(self, payload: dict[str, Any], *, token: str = TOKEN):
        return self.client.post(
            "/alertmanager", json=payload, headers={"Authorization": f"Bearer {token}"}
        )

    def read(self, path: str, **kw: Any):
        """GET a read endpoint with this hook's read token (none if it has none)."""
        token = self.settings.read_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        return self.client.get(path, headers=headers, **kw)

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        r = self.read("/audit", params={"n": 5000, **params})
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["rows"]))

    def flush_refusals(self) -> None:
        """Write the aggregated refusals now, as the webhook does when a minute ends."""
        self.app.state.refusals.flush(everything=True)

    def pending(self) -> list[dict[str, Any]]:
        """The pending approvals with their links, as the console lists them."""
        r = self.read("/console/pending")
        assert r.status_code == 200, r.text
        return r.json()["pending"]

    def link(self, approval_id: str, decision: str = "approve") -> str:
        """The approve (or reject) link of a held action, from the console's list."""
        (item,) = [p for p in self.pending() if p["id"] == approval_id]
        return item[f"{decision}_url"]

    def kinds(self, **params: Any) -> list[str]:
        return [row["kind"] for row in self.audit(**params)]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels or None)


@pytest.fixture
def make_hook(tmp_path):
    hooks: list[Hook] = []

    def make(**overrides: Any) -> Hook:
        hook = (
            Hook(tmp_path / f"h{len(hooks)}", **overrides) if hooks else Hook(tmp_path, **overrides)
        )
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        hook.close()


def anomaly(
    event_id: str = "ev-1",
    *,
    status: str = "firing",
    app: str = "checkout",
    metric: str = "latency_p99",
    reason: str = "level_shift",
) -> dict[str, Any]:
    now = time.time()
    return {
        "id": event_id,
        "metric": metric,
        "labels": {"namespace": "shop", "app": app},
        "score": 0.71,
        "reasons": [
            {"reason": reason, "window": "15m", "zscore": 6.2, "delta": 0.4, "threshold": 3.0}
        ],
        "value": 0.9,
        "baseline": 0.3,
        "started_at": now - 120,
        "observed_at": now,
        "model_version": "v1",
        "status": status,
    }


def alerts(
    status: str = "firing",
    *,
    fingerprint: str = "fp1",
    starts: str = "2026-11-23T07:00:00Z",
    alertname: str = "CheckoutDown",
    app: str = "checkout",
) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="' + alertname + '"}',
        "receiver": "aiops",
        "status": status,
        "externalURL": "http://alertmanager",
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": alertname,
                    "namespace": "shop",
                    "app": app,
                    "severity": "page",
                },
                "annotations": {"summary": "checkout is down"},
                "startsAt": starts,
                "endsAt": "2026-11-23T07:10:00Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "fingerprint": fingerprint,
                "generatorURL": "http://prometheus/graph",
            }
        ],
    }
