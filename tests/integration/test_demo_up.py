"""``aiops demo up``: the whole loop on real processes, healed by the webhook, stopped by Ctrl-C.

The demo workload's checkout app has had its latency tripled for 15 minutes (in
the backfilled history), so the loop has work at once: the detector flags it and
posts a signed event, the webhook's policy "restarts" the app (ends its fault,
``--autofix``), and Prometheus, with the shipped rules, fires AIOpsAnomalyDetected
to the real Alertmanager, which delivers it to the webhook too — the same
incident, so the cooldown holds. Then every dashboard panel is proven against
this run's data: each PromQL target must return series from the run's
Prometheus, each SQL target must run on the audit database it filled. SIGINT
stops every process it started.
"""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from demo.prometheus import free_port, port_is_free
from feature_store.db import make_engine
from tests.conftest import require_binary
from tests.dashboards.queries import dashboard_paths, promql_targets, sql_targets
from tests.integration.conftest import aiops_command, detector_env, poll

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_demo_up_runs_the_whole_loop_and_stops_cleanly(binaries, tmp_path):
    require_binary("/usr/bin/prometheus-alertmanager")
    ports = {name: free_port() for name in ("prom", "workload", "detector", "am", "webhook")}
    log = tmp_path / "demo-up.log"
    proc = subprocess.Popen(
        [
            *aiops_command(),
            "demo",
            "up",
            "--workdir",
            str(tmp_path / "demo"),
            "--prom-port",
            str(ports["prom"]),
            "--workload-port",
            str(ports["workload"]),
            "--detector-port",
            str(ports["detector"]),
            "--alertmanager-port",
            str(ports["am"]),
            "--webhook-port",
            str(ports["webhook"]),
            "--hours",
            "4",
            "--interval",
            "5",
            "--autofix",
            "--fault",
            "checkout:latency_shift:3600:-900",
        ],
        env=detector_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    hook = f"http://127.0.0.1:{ports['webhook']}"
    workload = f"http://127.0.0.1:{ports['workload']}"

    def audit() -> list[dict]:
        if proc.poll() is not None:
            pytest.fail(f"aiops demo up exited {proc.returncode}: {log.read_text()[-2000:]}")
        rows = httpx.get(f"{hook}/audit", params={"n": 500}, timeout=5).json()["rows"]
        return list(reversed(rows))

    try:
        poll(
            lambda: any(r["kind"] == "executed" for r in audit()),
            timeout=120,
            what="the webhook healing checkout",
        )
        executed = [r for r in audit() if r["kind"] == "executed"]
        assert len(executed) == 1 and executed[0]["app"] == "checkout"
        assert executed[0]["metric"] == "latency_p99"
        assert httpx.get(f"{workload}/faults", timeout=5).json() == []  # the fault was ended
        # Prometheus' rule fires and Alertmanager delivers the alert to the webhook
        poll(
            lambda: any(r["alertname"] == "AIOpsAnomalyDetected" for r in audit()),
            timeout=150,
            what="AIOpsAnomalyDetected through Alertmanager",
        )
        from_alert = [r for r in audit() if r["alertname"] == "AIOpsAnomalyDetected"]
        # the alert joins the detector's incident (rows without one: duplicates, late resolves)
        assert {r["incident_id"] for r in from_alert if r["incident_id"]} == {
            executed[0]["incident_id"]
        }
        assert sum(r["kind"] == "executed" for r in audit()) == 1  # the cooldown held
        # every PromQL panel of every dashboard shows data from this run
        assert _empty_panels(f"http://127.0.0.1:{ports['prom']}") == []
        # every SQL panel runs on the audit database the run filled
        engine = make_engine(f"sqlite:///{tmp_path / 'demo' / 'aiops.db'}")
        try:
            with engine.connect() as conn:
                for path in dashboard_paths():
                    for title, sql in sql_targets(path, "sqlite"):
                        conn.exec_driver_sql(sql).fetchall()  # raises on a broken query
                        assert title
        finally:
            engine.dispose()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    out = log.read_text()
    assert proc.returncode == 0, out[-2000:]
    assert "stopped: webhook, alertmanager, prometheus" in out
    assert all(port_is_free(p) for p in ports.values()), out[-1000:]


def _empty_panels(prom_url: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel, query) of every PromQL target that returns no series."""
    out = []
    for path in dashboard_paths():
        for title, expr in promql_targets(path):
            r = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
            data = r.json()
            if data.get("status") != "success" or not data["data"]["result"]:
                out.append((path.name, title, expr))
    return out
