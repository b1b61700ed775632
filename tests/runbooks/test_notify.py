"""The detector's side: signed events to the webhook, retries on 5xx only."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import uvicorn
from prometheus_client import CollectorRegistry

from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_event
from demo.prometheus import free_port
from detector.exporter import DetectorMetrics
from detector.notify import Notifier, anomaly_event, event_id
from tests.integration.conftest import poll
from tests.runbooks.conftest import SECRET


class Scripted(BaseHTTPRequestHandler):
    """Answers with the next status of ``server.script``; records what it got."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got.append((dict(self.headers), body))
        status = self.server.script.pop(0) if self.server.script else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def scripted(*statuses: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.got = list(statuses), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def result(**kw):
    base = dict(
        metric="latency_p99",
        labels={"namespace": "shop", "app": "checkout"},
        score=0.8,
        reasons=[],
        value=1.0,
        baseline=0.3,
        started_at=1000.0,
        observed_at=1060.0,
        model_version="v2",
    )
    return SimpleNamespace(**{**base, **kw})


def notifier(url: str) -> tuple[Notifier, CollectorRegistry]:
    registry = CollectorRegistry()
    return Notifier(url, SECRET, backoff=0.01, metrics=DetectorMetrics(registry)), registry


def test_5xx_is_retried_with_backoff_and_the_event_is_signed():
    server = scripted(503, 500)
    n, registry = notifier(f"http://127.0.0.1:{server.server_address[1]}/anomalies")
    n.send(anomaly_event(result(), "firing", 2000.0))
    assert n.drain()
    assert len(server.got) == 3
    headers, body = server.got[-1]
    assert (
        verify_event(
            SECRET,
            headers[TIMESTAMP_HEADER],
            headers[SIGNATURE_HEADER],
            body,
            float(headers[TIMESTAMP_HEADER]),
        )
        is None
    )
    event = json.loads(body)
    assert event["id"] == event_id("latency_p99", {"namespace": "shop", "app": "checkout"}, 1000.0)
    assert registry.get_sample_value("aiops_detector_webhook_events_total", {"result": "sent"}) == 1
    server.shutdown()


def test_4xx_is_not_retried():
    server = scripted(401)
    n, registry = notifier(f"http://127.0.0.1:{server.server_address[1]}/anomalies")
    n.send(anomaly_event(result(), "firing", 2000.0))
    assert n.drain()
    assert len(server.got) == 1
    assert (
        registry.get_sample_value("aiops_detector_webhook_events_total", {"result": "refused"}) == 1
    )
    server.shutdown()


def test_events_reach_the_real_webhook_which_opens_and_closes_the_incident(make_hook):
    hook = make_hook(autofix_enabled=False)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(hook.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, timeout=20, what="webhook")
        n, _ = notifier(f"http://127.0.0.1:{port}/anomalies")
        r = result(reasons=[SimpleNamespace(as_dict=lambda: {"reason": "level_shift"})])
        n.send(anomaly_event(r, "firing", 2000.0))
        n.send(anomaly_event(r, "firing", 2000.0))  # a replay of the same onset
        n.send(anomaly_event(r, "resolved", 2100.0))
        assert n.drain()
        kinds = hook.kinds()
        assert kinds.count("incident_opened") == 1 and kinds.count("duplicate") == 1
        assert kinds[-1] == "resolved"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_detector_posts_one_event_per_onset_and_one_when_it_ends(monkeypatch):
    """Three anomalous cycles and one healthy one: exactly one firing (once the incident
    settled) and one resolved."""
    import numpy as np

    from tests.detector.test_exporter import scripted_detector, series

    server = scripted()
    det, source, _ = scripted_detector(
        monkeypatch,
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/anomalies",
        webhook_secret=SECRET,
    )
    labels = [{"app": "checkout"}]
    now = 1_700_000_000.0
    source.rows["latency_p99"] = (labels, np.stack([series(1, shift=0.1)]))
    for i in range(3):
        assert any(r.anomalous for r in det.run_cycle(now + 60 * i).all_results())
    source.rows["latency_p99"] = (labels, np.stack([series(1)]))
    assert not any(r.anomalous for r in det.run_cycle(now + 180).all_results())
    assert det.notifier.drain()
    events = [json.loads(body) for _, body in server.got]
    assert [e["status"] for e in events] == ["firing", "resolved"]
    assert events[0]["id"] == events[1]["id"]
    assert events[0]["reasons"][0]["reason"] == "level_shift"
    # posted once it settled (AIOPS_INCIDENT_SETTLE_SECONDS, 60): the next cycle
    assert events[0]["started_at"] <= now
    assert events[0]["observed_at"] - events[0]["started_at"] >= 60
    server.shutdown()


def test_a_spike_alone_sends_no_event_and_a_spike_that_grows_sends_one(monkeypatch):
    """A spike is shown on the gauges, not acted on: the webhook hears nothing of it. An
    anomaly that starts as a spike and goes on as a shift is posted once the shift holds
    it, with the onset (and event id) of the spike."""
    import numpy as np

    from tests.detector.test_exporter import scripted_detector, series

    server = scripted()
    det, source, _ = scripted_detector(
        monkeypatch,
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/anomalies",
        webhook_secret=SECRET,
    )
    labels = [{"app": "checkout"}]
    now = 1_700_000_000.0
    spiked = series(1)
    spiked[-1] += 0.2  # fifty sds, one point
    source.rows["latency_p99"] = (labels, np.stack([spiked]))
    (r,) = det.run_cycle(now).all_results()
    assert r.anomalous and [x.reason for x in r.reasons] == ["spike"]
    source.rows["latency_p99"] = (labels, np.stack([series(1)]))
    assert not any(r.anomalous for r in det.run_cycle(now + 60).all_results())
    assert det.notifier.drain()
    assert server.got == []
    # the same first point, then the shift goes on: one firing event, from the onset
    grown = series(2)
    source.rows["latency_p99"] = (labels, np.stack([np.concatenate([grown[1:], [0.3]])]))
    (r,) = det.run_cycle(now + 120).all_results()
    assert r.anomalous and [x.reason for x in r.reasons] == ["spike"]
    onset = r.observed_at
    source.rows["latency_p99"] = (labels, np.stack([series(2, shift=0.1)]))
    reasons = []
    for i in range(1, 30):
        (r,) = det.run_cycle(now + 120 + 60 * i).all_results()
        assert r.anomalous, i
        reasons = [x.reason for x in r.reasons]
        if set(reasons) - {"spike"}:
            break
    assert set(reasons) - {"spike"}, reasons
    assert det.notifier.drain()
    events = [json.loads(body) for _, body in server.got]
    assert [e["status"] for e in events] == ["firing"]
    assert events[0]["started_at"] == onset < events[0]["observed_at"]
    server.shutdown()
