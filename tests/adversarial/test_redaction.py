"""One redaction: a password or token inside a URL never reaches what people read.

- The detector's start line (``detector started prometheus=...``), its log, ``/healthz``
  and ``/metrics`` do not show the Prometheus URL's password (the real ``aiops detect``).
- An ``http`` action's URL credentials (``user:PASSWORD@``, ``?token=``) are in no audit
  row (``policy_match``, ``dry_run``, ``executed``), neither through ``GET /audit`` nor
  ``aiops audit export`` — which also masks rows written before — while the action still
  sends them to its endpoint.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from aiops.core.redact import redact, redact_url
from demo.prometheus import free_port, stop_process
from feature_store import tables
from tests.integration.conftest import aiops_command, detector_env, poll, run_aiops
from tests.runbooks.conftest import anomaly

# -- the redaction itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://user:PASSWORD@host/hook?token=TOKEN&team=shop",
            "http://user:***@host/hook?token=***&team=shop",
        ),
        ("https://TOKEN@host/x", "https://***@host/x"),  # a user info without password
        ("https://ghp_TOKEN:x-oauth-basic@github.com/", "https://***@github.com/"),
        ("postgresql://aiops:PA#SS@WORD@db/aiops", "postgresql://aiops:***@db/aiops"),
        (
            "http://h/p?api_key=K&X-Amz-Signature=S;sig=G&access_token=A&secret=C&password=P&q=up",
            "http://h/p?api_key=***&X-Amz-Signature=***;sig=***&access_token=***&secret=***"
            "&password=***&q=up",
        ),
        ("http://h/cb#access_token=A&state=1", "http://h/cb#access_token=***&state=1"),
        ("http://prometheus:9090", "http://prometheus:9090"),
    ],
)
def test_a_url_loses_its_user_info_and_secret_parameters(url, shown):
    assert redact_url(url) == shown
    assert redact(f"error at {url} (retrying)") == f"error at {shown} (retrying)"


# -- item 6: the detector's start line -----------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_detector_start_line_health_and_metrics_hide_the_prometheus_password(tmp_path):
    password = "prom-PASS-6e1b"
    hook_pass, hook_token = "hook-PASS-77aa", "hook-TOKEN-51cc"
    port = free_port()
    env = detector_env(
        PROM_URL=f"http://aiops:{password}@127.0.0.1:{free_port()}",  # nothing listens
        RUNBOOK_WEBHOOK_URL=(
            f"http://hook:{hook_pass}@127.0.0.1:{free_port()}/anomalies?token={hook_token}"
        ),
        RUNBOOK_WEBHOOK_SECRET="w" * 32,
        AIOPS_PROM_RETRIES="0",
        AIOPS_PROM_TIMEOUT_SECONDS="1",
        AIOPS_HTTP_HOST="127.0.0.1",
        AIOPS_HTTP_PORT=str(port),
        AIOPS_RETRAIN_CRON="off",
    )
    log = tmp_path / "detector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*aiops_command(), "detect"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        poll(
            lambda: "detector started" in log.read_text() or proc.poll() is not None,
            timeout=90,
            every=0.1,
            what="the detector's start line",
        )
        assert proc.poll() is None, log.read_text()
        base = f"http://127.0.0.1:{port}"
        health = poll(lambda: httpx.get(f"{base}/healthz", timeout=5).text, timeout=30)
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        # a failed cycle against the dead Prometheus has been logged
        poll(lambda: "unreachable" in log.read_text(), timeout=30, every=0.1, what="an error")
    finally:
        stop_process(proc)
    text = log.read_text()
    (start,) = [line for line in text.splitlines() if "detector started" in line]
    assert "prometheus=http://aiops:***@127.0.0.1:" in start, start
    for shown in (text, health, metrics):
        for secret in (password, hook_pass, hook_token):
            assert secret not in shown


# -- item 7: an http action's URL ----------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    """Records each POST; its answer echoes the full URL, as some error pages do."""

    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append(  # type: ignore[attr-defined]
            {
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "body": json.loads(self.rfile.read(length) or b"{}"),
            }
        )
        host, port = self.server.server_address[:2]
        echo = f"accepted http://{self.headers.get('Host')}{self.path} on {host}:{port}"
        body = echo.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


PASSWORD, TOKEN = "http-PASS-3f9d", "http-TOKEN-c4e2"


def _http_policy(path: Path, port: int, risk: str = "low") -> Path:
    url = f"http://hookuser:{PASSWORD}@127.0.0.1:{port}/hook?token={TOKEN}&team=shop"
    path.write_text(
        "shop.checkout:\n"
        "  - match: latency_p99\n"
        "    action: http\n"
        f"    params: {{url: {json.dumps(url)}}}\n"
        f"    risk: {risk}\n"
    )
    return path


def _export(database_url: str) -> str:
    proc = run_aiops(
        "audit", "export", "--since", "now-1h", env=detector_env(AIOPS_DATABASE_URL=database_url)
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_http_action_credentials_are_in_no_audit_row_nor_the_export(make_hook, receiver, tmp_path):
    port = receiver.server_address[1]
    policy = _http_policy(tmp_path / "http-policy.yaml", port)
    shown = f"POST http://hookuser:***@127.0.0.1:{port}/hook?token=***&team=shop for shop/checkout"

    # dry run: policy_match and dry_run say what would run, without the credentials
    dry = make_hook(policy_file=policy, autofix_dry_run=True)
    assert dry.post_event(anomaly("dry-1")).json()["decision"] == "dry_run"
    rows = dry.audit()
    would = {r["kind"]: r["details"].get("would") for r in rows if r["details"]}
    assert would["policy_match"] == shown and would["dry_run"] == shown
    assert receiver.seen == []

    # executed: the endpoint gets the credentials, the audit never holds them
    live = make_hook(policy_file=policy, autofix_dry_run=False)
    assert live.post_event(anomaly("live-1")).json()["decision"] == "executed"
    poll(lambda: "executed" in live.kinds(), timeout=30, every=0.05, what="the executed row")
    (got,) = receiver.seen
    assert got["path"] == f"/hook?token={TOKEN}&team=shop"
    assert (
        got["authorization"]
        == "Basic " + base64.b64encode(f"hookuser:{PASSWORD}".encode()).decode()
    )
    assert got["body"]["app"] == "checkout"
    rows = live.audit()
    would = {r["kind"]: r["details"].get("would") for r in rows if r["details"]}
    assert would["policy_match"] == shown
    (executed,) = [r["details"] for r in rows if r["kind"] == "executed"]
    assert executed["status"] == 200
    # the endpoint's answer echoed its URL: the audited answer is masked too
    assert executed["body"] == (
        f"accepted http://127.0.0.1:{port}/hook?token=***&team=shop on 127.0.0.1:{port}"
    )

    for hook in (dry, live):
        audited = json.dumps(hook.audit(), default=str)
        exported = _export(hook.settings.database_url)
        assert "hookuser:***@" in audited and "hookuser:***@" in exported
        for secret in (PASSWORD, TOKEN):
            assert secret not in audited
            assert secret not in exported


def test_the_audit_export_masks_a_url_secret_of_a_row_written_before(make_hook):
    hook = make_hook(autofix_enabled=False)
    url = f"http://hookuser:{PASSWORD}@127.0.0.1:9/hook?token={TOKEN}"
    with hook.engine.begin() as conn:
        conn.execute(
            insert(tables.audit).values(
                ts=time.time(),
                kind="dry_run",
                action="http",
                result="dry_run",
                actor="webhook",
                details={"would": f"POST {url} for shop/checkout"},
            )
        )
    rows = list(csv.DictReader(io.StringIO(_export(hook.settings.database_url))))
    (row,) = [r for r in rows if r["kind"] == "dry_run"]
    assert json.loads(row["details"])["would"] == (
        "POST http://hookuser:***@127.0.0.1:9/hook?token=*** for shop/checkout"
    )


def test_a_held_http_action_shows_its_url_masked_and_runs_with_it_once_approved(
    make_hook, receiver, tmp_path
):
    port = receiver.server_address[1]
    hook = make_hook(policy_file=_http_policy(tmp_path / "held.yaml", port, risk="high"))
    assert hook.post_event(anomaly("held-1")).json()["decision"] == "approval_pending"
    (held,) = hook.pending()
    assert held["params"]["url"] == (
        f"http://hookuser:***@127.0.0.1:{port}/hook?token=***&team=shop"
    )
    for secret in (PASSWORD, TOKEN):
        assert secret not in json.dumps(hook.pending())
        assert secret not in json.dumps(hook.audit(), default=str)
    # the approval binds the real parameters: approved, the endpoint gets the credentials
    assert hook.client.get(held["approve_url"]).status_code == 200
    poll(lambda: receiver.seen, timeout=30, every=0.05, what="the approved POST")
    assert receiver.seen[0]["path"] == f"/hook?token={TOKEN}&team=shop"
