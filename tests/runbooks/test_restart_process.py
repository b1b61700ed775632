"""A ``command`` action restarts a real local process; the audit tells the whole story."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from aiops.core.db import make_engine
from aiops.core.settings import load_settings
from demo.prometheus import free_port
from runbooks.app import create_app
from runbooks.policy import load_policy
from sql.migrate import migrate
from tests.integration.conftest import poll
from tests.runbooks.conftest import anomaly

#: a tiny service: answers /health with its pid
SERVICE = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(str(os.getpid()).encode())
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

#: what an operator would allow-list: stop the service by its pidfile, start it again
RESTART = """
import os, signal, subprocess, sys, time
pidfile, port, service = sys.argv[1], sys.argv[2], sys.argv[3]
old = int(open(pidfile).read())
os.kill(old, signal.SIGTERM)
for _ in range(200):
    try:
        os.kill(old, 0)
    except OSError:
        break
    time.sleep(0.02)
new = subprocess.Popen([sys.executable, service, port], start_new_session=True)
open(pidfile, "w").write(str(new.pid))
print("restarted", old, "->", new.pid)
"""


def test_command_action_restarts_the_service_and_the_fix_is_verified(tmp_path: Path):
    port = free_port()
    service, restart = tmp_path / "service.py", tmp_path / "restart.py"
    service.write_text(SERVICE)
    restart.write_text(RESTART)
    pidfile = tmp_path / "service.pid"
    first = subprocess.Popen([sys.executable, str(service), str(port)], start_new_session=True)
    pidfile.write_text(str(first.pid))
    url = f"http://127.0.0.1:{port}/health"
    poll(lambda: httpx.get(url, timeout=1).text == str(first.pid), timeout=20, what="service")

    argv = [sys.executable, str(restart), str(pidfile), str(port), str(service)]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "shop.checkout:\n  - match: latency_p99\n    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
    )
    settings = load_settings(
        metrics=None,
        config=None,
        database_url=f"sqlite:///{tmp_path}/hook.db",
        webhook_secret="k",
        autofix_enabled=True,
        autofix_dry_run=False,
        policy_file=policy,
    )
    engine = make_engine(settings.database_url)
    migrate(engine)
    app = create_app(settings, engine, load_policy(None, policy))
    rem = app.state.remediator
    from runbooks.events import AnomalyEvent, from_anomaly

    try:
        decision = rem.handle(from_anomaly(AnomalyEvent.model_validate(anomaly("slow"))))
        assert decision.kind == "executed", decision
        new_pid = int(pidfile.read_text())
        assert new_pid != first.pid
        first.wait(10)  # the old process is gone
        poll(
            lambda: httpx.get(url, timeout=1).text == str(new_pid),
            timeout=20,
            what="restarted service",
        )
        # the detector sees the metric recover and sends the resolve event
        rem.handle(from_anomaly(AnomalyEvent.model_validate(anomaly("slow", status="resolved"))))
        from sqlalchemy import select

        from feature_store import tables

        with engine.connect() as conn:
            kinds = [r.kind for r in conn.execute(select(tables.audit).order_by(tables.audit.c.id))]
        assert kinds == [
            "request",
            "incident_opened",
            "policy_match",
            "executed",
            "request",
            "verified",
            "resolved",
        ]
        with engine.connect() as conn:
            executed = conn.execute(
                select(tables.audit.c.details).where(tables.audit.c.kind == "executed")
            ).scalar_one()
        assert "restarted" in executed["stdout"] and executed["exit_code"] == 0
    finally:
        for pid in {first.pid, int(pidfile.read_text())}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        engine.dispose()


def test_a_command_over_its_time_bound_is_killed_and_failed(tmp_path: Path):
    from runbooks.actions import Target, make_action

    marker = tmp_path / "late"
    code = f"import time; time.sleep(30); open({str(marker)!r}, 'w').write('x')"
    action = make_action(
        "command", {"argv": [sys.executable, "-c", code], "ok_codes": [0]}, timeout=0.5
    )
    result = action.run(Target("shop", "checkout"))
    assert result.result == "failed" and "timed out" in result.detail
    assert not marker.exists()
    bad = make_action("command", {"argv": ["/nonexistent/x"], "ok_codes": [0]}, timeout=1)
    assert bad.run(Target("shop", "checkout")).detail.startswith("cannot run /nonexistent/x")
    exit3 = make_action(
        "command",
        {"argv": [sys.executable, "-c", "import sys; sys.exit(3)"], "ok_codes": [0]},
        timeout=5,
    )
    r = exit3.run(Target("shop", "checkout"))
    assert r.result == "failed" and r.data["exit_code"] == 3
