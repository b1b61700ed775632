"""``aiops demo up``: the whole loop on real processes, from the fault to the closed incident.

Two demos run side by side (real Prometheus, Alertmanager, detector, webhook and
demo workload each), both with ``--autofix``:

- ``--via both`` (the README's demo), with payments failing from the start (the
  storm of issue 20): a payments fault raises checkout's and frontend's errors
  too. The detector groups the storm into ONE incident whose probable cause is
  payments and posts one signed event for it; the webhook opens one incident and
  its policy "restarts" payments (ends its fault), and nothing else. Prometheus'
  alerts about the members reach the webhook through Alertmanager and join that
  incident (checkout's and frontend's are symptoms: never acted on). Payments
  recovers, the last member's anomaly clears and the detector posts a signed
  ``resolved`` event, which makes the fix ``verified`` and closes the incident
  with its time to resolve. Then every dashboard panel is proven against this
  run's data.
- ``--via alertmanager``, with the checkout app's latency tripled from the start:
  the detector posts nothing; the alert alone opens the incident and triggers the
  fix, and Alertmanager's resolved notification, once the detector's anomaly
  cleared and the rule stopped firing, verifies and closes it.

The demo runs at its own pace (5 s steps, windows 30s/1m/3m, rules' ``for`` 15 s),
so each loop ends within about two minutes. SIGINT stops every process a demo started.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiops.core.db import make_engine
from demo.prometheus import free_port, port_is_free
from tests.conftest import require_binary
from tests.dashboards.queries import dashboard_paths, promql_targets, sql_targets
from tests.integration.conftest import aiops_command, demo_audit, detector_env, poll

pytestmark = pytest.mark.integration

#: the fault each demo starts with; long enough never to end by itself during the test
FAULTS = {"both": "payments:error_burst:1800:0", "alertmanager": "checkout:latency_shift:1800:0"}
#: from the start: the fix ran (detection, and for the alert path its 15 s `for`)
HEAL_DEADLINE = 150.0
#: from the start: the metric recovered, the anomaly cleared, the incident closed
CLOSE_DEADLINE = 300.0


class DemoRun:
    """One ``aiops demo up`` process on free ports, with its audit and its Ctrl-C."""

    def __init__(self, tmp_path: Path, fault: str, *args: str) -> None:
        self.app = fault.split(":")[0]  # the app at fault
        self.ports = {n: free_port() for n in ("prom", "workload", "detector", "am", "webhook")}
        # the default, relative --workdir (var/demo) of a demo started in tmp_path: no
        # process it starts may depend on the working directory
        self.workdir = tmp_path / "var" / "demo"
        self.log = tmp_path / "demo-up.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                *aiops_command(),
                "demo",
                "up",
                "--prom-port",
                str(self.ports["prom"]),
                "--workload-port",
                str(self.ports["workload"]),
                "--detector-port",
                str(self.ports["detector"]),
                "--alertmanager-port",
                str(self.ports["am"]),
                "--webhook-port",
                str(self.ports["webhook"]),
                "--hours",
                "2",
                "--interval",
                "5",
                "--autofix",
                "--fault",
                fault,
                *args,
            ],
            env=detector_env(),
            cwd=tmp_path,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.output = ""

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def left(self, deadline: float) -> float:
        """Seconds left until ``deadline`` seconds after the start (at least 1)."""
        return max(1.0, deadline - (time.monotonic() - self.started))

    def audit(self) -> list[dict]:
        """The whole audit, oldest first."""
        if self.proc.poll() is not None:
            pytest.fail(f"aiops demo up exited {self.proc.returncode}: {self.tail()}")
        return demo_audit(self.url("webhook"), self.workdir)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if not self.output:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
            self.output = self.log.read_text(errors="replace")

    def assert_stopped_cleanly(self, *names: str) -> None:
        self.stop()
        assert self.proc.returncode == 0, self.output[-2000:]
        assert f"stopped: detector, {', '.join(names)}, demo workload" in self.output
        assert all(port_is_free(p) for p in self.ports.values()), self.output[-1000:]


@pytest.fixture(scope="module")
def demos(binaries, tmp_path_factory) -> Iterator[dict[str, DemoRun]]:
    """Both demos, started together so that their loops run at the same time."""
    require_binary("/usr/bin/prometheus-alertmanager")
    runs = {
        via: DemoRun(tmp_path_factory.mktemp(f"demo-{via}"), FAULTS[via], "--via", via)
        for via in ("both", "alertmanager")
    }
    try:
        yield runs
    finally:
        for run in runs.values():
            run.stop()


def checkout_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["app"] == "checkout" and r["metric"] == "latency_p99"]


def fault_rows(run: DemoRun, rows: list[dict]) -> list[dict]:
    """The rows about the app at fault (checkout: its latency only)."""
    if run.app == "checkout":
        return checkout_rows(rows)
    return [r for r in rows if r["app"] == run.app]


def healed_incident(run: DemoRun) -> str:
    """The incident whose fix ended the app's fault (exactly one fix ran for it)."""
    poll(
        lambda: any(r["kind"] == "executed" for r in fault_rows(run, run.audit())),
        timeout=run.left(HEAL_DEADLINE),
        what=f"the webhook healing {run.app}",
    )
    executed = [r for r in run.audit() if r["kind"] == "executed" and r["app"] == run.app]
    assert len(executed) == 1, executed
    if run.app == "checkout":
        assert executed[0]["metric"] == "latency_p99"
    assert executed[0]["action"] == "command" and executed[0]["result"] == "executed"
    # the "restart" ended the fault: nothing else would before 30 minutes
    assert httpx.get(f"{run.url('workload')}/faults", timeout=5).json() == []
    return executed[0]["incident_id"]


def closed_loop(run: DemoRun, incident: str) -> list[dict]:
    """Wait for the incident's resolve; return its rows and the request of each, in order:
    request → incident_opened → policy_match → executed → ... → request → verified → resolved.
    """

    def resolved() -> bool:
        return any(r["kind"] == "resolved" and r["incident_id"] == incident for r in run.audit())

    poll(
        resolved,
        timeout=run.left(CLOSE_DEADLINE),
        what=f"incident {incident} to be resolved (metric recovered, anomaly cleared)",
    )
    rows = run.audit()
    # a decision's rows directly follow its signal's `request` row (which names no incident)
    loop: list[dict] = []
    for i, row in enumerate(rows):
        if row["incident_id"] == incident:
            before = rows[i - 1] if i else None
            if before and before["kind"] == "request" and before in fault_rows(run, [before]):
                loop.append(before)
            loop.append(row)
    kinds = [r["kind"] for r in loop]
    assert kinds[:4] == ["request", "incident_opened", "policy_match", "executed"], kinds
    assert kinds[-3:] == ["request", "verified", "resolved"], kinds
    assert "not_recovered" not in kinds and "escalated" not in kinds, kinds
    assert kinds.count("executed") == 1
    verified, resolved_row = loop[-2], loop[-1]
    assert verified["result"] == "recovered"
    assert resolved_row["details"]["self_healed"] is True
    ttr = resolved_row["details"]["time_to_resolve_seconds"]
    assert 0 < ttr < CLOSE_DEADLINE
    assert loop[-3]["details"]["status"] == "resolved"
    # the incident table agrees, and so does the webhook's MTTR gauge
    engine = make_engine(f"sqlite:///{run.workdir / 'aiops.db'}")
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT status, resolved_at - opened_at, self_healed, actions"
                " FROM runbooks_incidents WHERE id = ?",
                (incident,),
            ).one()
    finally:
        engine.dispose()
    assert row[0] == "resolved" and row[2] == 1 and row[3] == 1, row
    assert row[1] == pytest.approx(ttr, abs=0.01)
    metrics = httpx.get(f"{run.url('webhook')}/metrics", timeout=5).text
    mttr = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("runbooks_mean_time_to_resolve_seconds ")
    ]
    assert mttr and mttr[0] > 0, metrics[-1500:]
    # the detector agrees that the app is back to normal
    metric = "latency_p99" if run.app == "checkout" else "success_rate"
    current = _detector_gauge(run, "aiops_anomaly_current", f'app="{run.app}"', metric)
    assert current == 0.0
    return loop


def _detector_gauge(run: DemoRun, name: str, label: str, metric: str) -> float | None:
    text = httpx.get(f"{run.url('detector')}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line and f'metric="{metric}"' in line:
            return float(line.split()[-1])
    return None


@pytest.mark.timeout(420)
def test_demo_up_groups_the_payments_storm_heals_its_cause_once_and_stops_cleanly(demos):
    run = demos["both"]
    incident = healed_incident(run)
    rows = run.audit()
    opened = next(
        r for r in rows if r["kind"] == "incident_opened" and r["incident_id"] == incident
    )
    first = rows[rows.index(opened) - 1]
    # the detector's signed event about its incident opened it and triggered the fix
    assert first["kind"] == "request" and first["details"]["source"] == "anomalies"
    assert first["details"]["status"] == "firing" and first["details"]["event_id"]
    assert opened["details"]["cause"] == "demo.payments", opened
    assert not [r for r in rows if r["kind"] == "unauthorized"]

    # the storm is that one incident: checkout's anomalies are its members, and
    # Alertmanager's pages about them join it as symptoms (nothing runs for them)
    def grouped() -> list[dict]:
        return [
            r
            for r in run.audit()
            if r["incident_id"] == incident
            and (
                any("demo.checkout" in line for line in (r["details"] or {}).get("evidence", []))
                or (r["kind"] == "incident_joined" and r["app"] == "checkout")
            )
        ]

    poll(grouped, timeout=run.left(HEAL_DEADLINE), what="checkout grouped into the incident")
    loop = closed_loop(run, incident)
    # the resolve that verified the fix is the detector's own signed `resolved` event
    closing = loop[-3]
    assert closing["details"]["source"] == "anomalies", closing
    assert closing["details"]["event_id"] == first["details"]["event_id"]  # same incident id
    rows = run.audit()
    # one incident for the whole storm, from the detector; one action, on payments
    detector_incidents = {
        r["incident_id"] for r in rows if (r["details"] or {}).get("detector_incident")
    }
    assert detector_incidents == {incident}, detector_incidents
    assert [r["app"] for r in rows if r["kind"] == "executed"] == ["payments"]
    joined = [r for r in rows if r["kind"] == "incident_joined"]
    assert all(r["incident_id"] == incident for r in joined), joined
    # the detector exported the incident with payments as its probable cause
    assert _prometheus_has(
        run, 'max_over_time(aiops_incident_info{probable_cause_app="payments"}[10m])'
    )

    # the on-call says "real incident" with the console's one-click link: recorded,
    # audited, exported on the webhook's /metrics and scraped by Prometheus
    token = (run.workdir / "read-token").read_text().strip()
    listed = httpx.get(
        f"{run.url('webhook')}/console/anomalies",
        params={"by": "on-call"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()
    payments = next(a for a in listed["anomalies"] if a["labels"].get("app") == "payments")
    clicked = httpx.get(run.url("webhook") + payments["incident_url"], timeout=10)
    assert clicked.status_code == 200 and clicked.json()["feedback"] == "recorded", clicked.text
    assert any(r["kind"] == "feedback" and r["actor"] == "on-call" for r in run.audit())
    poll(
        lambda: _prometheus_has(run, 'aiops_feedback_total{verdict="incident"}'),
        timeout=60,
        what="aiops_feedback_total scraped",
    )
    # every PromQL panel of every dashboard shows data from this run
    assert _empty_panels(run.url("prom")) == []
    # every SQL panel runs on the audit database the run filled
    engine = make_engine(f"sqlite:///{run.workdir / 'aiops.db'}")
    try:
        with engine.connect() as conn:
            for path in dashboard_paths():
                for title, sql in sql_targets(path, "sqlite"):
                    conn.exec_driver_sql(sql).fetchall()  # raises on a broken query
                    assert title
    finally:
        engine.dispose()
    run.assert_stopped_cleanly("webhook", "alertmanager", "prometheus")


def _prometheus_has(run: DemoRun, expr: str) -> bool:
    r = httpx.get(f"{run.url('prom')}/api/v1/query", params={"query": expr}, timeout=10)
    return bool(r.json()["data"]["result"])


@pytest.mark.timeout(420)
def test_demo_up_via_alertmanager_alone_heals_verifies_and_resolves(demos):
    run = demos["alertmanager"]
    incident = healed_incident(run)
    loop = closed_loop(run, incident)
    # the alert opened the incident and triggered the fix; its resolve verified it
    assert loop[0]["alertname"] == "AIOpsAnomalyDetected"
    assert loop[0]["details"]["source"] == "alertmanager"
    assert loop[0]["details"]["status"] == "firing"
    closing = loop[-3]
    assert closing["details"]["source"] == "alertmanager", closing
    assert closing["alertname"] == "AIOpsAnomalyDetected"
    # ... and no other alert of the series was still firing
    assert "incident_kept_open" not in closing["details"]
    # the detector posted nothing on this path
    assert not [r for r in run.audit() if (r["details"] or {}).get("source") == "anomalies"]
    # the rule stopped firing in Prometheus
    alerts = httpx.get(f"{run.url('prom')}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    assert not [
        a
        for a in alerts
        if a["labels"].get("app") == "checkout"
        and a["labels"].get("metric") == "latency_p99"
        and a["state"] == "firing"
    ], alerts
    run.assert_stopped_cleanly("webhook", "alertmanager", "prometheus")


def _empty_panels(prom_url: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel, query) of every PromQL target that returns no series over the
    last 10 minutes of the run (a range query, as Grafana runs it over its time range:
    "anomalous now" had its series while the incident was open)."""
    out = []
    end = time.time()
    for path in dashboard_paths():
        for title, expr in promql_targets(path):
            r = httpx.get(
                f"{prom_url}/api/v1/query_range",
                params={"query": expr, "start": end - 600, "end": end, "step": "15s"},
                timeout=10,
            )
            data = r.json()
            if data.get("status") != "success" or not data["data"]["result"]:
                out.append((path.name, title, expr))
    return out
