"""The detector is never blinded without saying so (issue 17, items 8-11).

- Answers that are all garbage (cut-short JSON, an HTML page, both with HTTP 200) fail
  the cycle: ``/healthz`` turns 503 once stale, ``aiops_detector_prometheus_up`` is 0,
  the last-success timestamp stops, ``cycles_total{result="failed"}`` counts them; a
  real Prometheus behind a proxy that turns its answers into garbage, then back.
- A read timeout is ``kind="timeout"``; a refused connection stays ``unreachable``.
- The series cap bounds what is parsed: an answer of 5,000 series materialises at
  most twice the cap, the rest is counted, never built (the memory of the 50,000-series
  answer is measured by ``bench/big_answer.py``, not here).
- A firing event outlives a webhook outage (503, then not listening) and a kill -9 of
  the detector: the restarted detector delivers it, with the same id, once the webhook
  is back; a resolved event supersedes a firing one still waiting; the queue is
  bounded (oldest dropped, counted).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiops.core.errors import QueryError
from aiops.core.settings import load_settings
from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_event
from bench import standin
from demo.prometheus import PrometheusProcess, free_port, scrape_config, stop_process
from detector.catalogue import Query
from detector.cycle import Detector
from detector.exporter import DetectorMetrics
from detector.notify import Notifier, anomaly_event
from detector.service import create_app
from detector.source import MatrixBuilder, PrometheusSource, Selection
from tests.integration.conftest import ServiceThread, aiops_command, detector_env, poll

SECRET = "blinded-detector-test-secret-0123456789"
BENCH = Query(name="bench", promql="bench_value", labels=("namespace", "app"), seasonality="none")


class StandIn:
    """``bench/standin.py`` served from a thread of this process."""

    def __init__(self, series: int = 3, **kw: Any) -> None:
        self.server = standin.serve(free_port(), series, **kw)
        self.state = self.server.state  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mode(self, mode: str) -> None:
        httpx.post(f"{self.url}/-/mode", params={"m": mode}).raise_for_status()

    def stop(self) -> None:
        self.state.released.set()
        self.server.shutdown()
        self.server.server_close()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a /metrics exposition."""
    want = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head == want or (labels and _same(head, name, labels)):
            return float(value)
    return None


def _same(head: str, name: str, labels: dict[str, str]) -> bool:
    if not head.startswith(name + "{"):
        return False
    pairs = dict(p.split("=", 1) for p in head[len(name) + 1 : -1].split(",") if p)
    return {k: v.strip('"') for k, v in pairs.items()} == labels


# -- item 8: garbage answers are a failed cycle ----------------------------------------


@pytest.fixture
def real_prometheus(tmp_path):
    port = free_port()
    config = scrape_config({"prometheus": [f"127.0.0.1:{port}"]}, interval="1s")
    prom = PrometheusProcess(tmp_path / "prom", config, port=port).start()
    try:
        poll(
            lambda: httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}).json()["data"][
                "result"
            ],
            timeout=30,
            what="Prometheus scraping itself",
        )
        yield prom
    finally:
        prom.stop()


def test_garbage_answers_fail_the_cycle_turn_healthz_503_and_prometheus_up_0(real_prometheus):
    proxy = StandIn(upstream=real_prometheus.url)
    settings = load_settings(
        prom_url=proxy.url,
        metrics=None,
        config=None,
        interval_seconds=0.3,
        stale_after_seconds=1.5,
        prom_retries=0,
    )
    det = Detector(settings, queries=[Query(name="up", promql="up", labels=("job",))])
    try:
        with ServiceThread(create_app(det), free_port()) as svc:
            poll(lambda: httpx.get(f"{svc.url}/healthz").status_code == 200, timeout=30)
            text = httpx.get(f"{svc.url}/metrics").text
            assert metric(text, "aiops_detector_prometheus_up") == 1
            for mode in ("truncated", "html"):
                proxy.mode(mode)
                failed = metric(text, "aiops_detector_cycles_total", result="failed") or 0
                poll(lambda: httpx.get(f"{svc.url}/healthz").status_code == 503, timeout=30)
                body = httpx.get(f"{svc.url}/healthz").json()
                assert body["status"] == "stale" and body["prometheus"]["up"] is False
                assert body["queries"]["up"]["error"].startswith("bad_response")
                text = httpx.get(f"{svc.url}/metrics").text
                assert metric(text, "aiops_detector_prometheus_up") == 0
                assert metric(text, "aiops_detector_cycles_total", result="failed") > failed
                assert metric(
                    text, "aiops_detector_query_errors_total", query="up", kind="bad_response"
                )
                stamp = metric(text, "aiops_detector_last_success_timestamp_seconds")
                cycles = det.cycles
                poll(lambda c=cycles: det.cycles >= c + 2, timeout=30, what="two more cycles")
                text = httpx.get(f"{svc.url}/metrics").text
                assert metric(text, "aiops_detector_last_success_timestamp_seconds") == stamp
                proxy.mode("matrix")  # the real Prometheus again: recovers by itself
                poll(lambda: httpx.get(f"{svc.url}/healthz").status_code == 200, timeout=30)
                text = httpx.get(f"{svc.url}/metrics").text
                assert metric(text, "aiops_detector_prometheus_up") == 1
    finally:
        proxy.stop()


# -- item 9: a read timeout is a timeout -------------------------------------------------


def test_a_read_timeout_is_kind_timeout_and_a_refused_connection_stays_unreachable():
    server = StandIn()
    server.mode("hang")  # the request is read, no answer comes
    try:
        registry = CollectorRegistry()
        settings = load_settings(
            prom_url=server.url, metrics=None, config=None, prom_timeout_seconds=0.3
        )
        det = Detector(settings, queries=[BENCH], registry=registry)
        det.source.backoff = 0.05
        report = det.run_cycle()
        assert report.errors["bench"].kind == "timeout", report.errors["bench"]
        errors = {"query": "bench"}
        assert (
            registry.get_sample_value(
                "aiops_detector_query_errors_total", {**errors, "kind": "timeout"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "aiops_detector_query_errors_total", {**errors, "kind": "unreachable"}
            )
            == 0
        )
    finally:
        server.stop()
    closed = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=0.3, retries=1)
    closed.backoff = 0.05
    with pytest.raises(QueryError) as err:
        closed.fetch(BENCH, end=time.time(), lookback=3600, step=60)
    assert err.value.kind == "unreachable"


# -- item 10: the cap bounds parsing ------------------------------------------------------


def _item(i: int, points: int = 61) -> dict[str, Any]:
    return {
        "metric": {"__name__": "bench_value", "app": f"app{i:05d}", "namespace": "ns"},
        "values": [[1_700_000_000 + 60 * k, str(i + k)] for k in range(points)],
    }


def test_the_parser_materialises_at_most_twice_the_cap_and_counts_the_rest():
    known = {(("app", "app00990"), ("namespace", "ns"))}  # exported before: kept first
    builder = MatrixBuilder(BENCH, 1_700_000_000.0, 60.0, 61, Selection(limit=10, known=known))
    for i in range(1000):
        builder.add(_item(i))
    batch = builder.batch()
    # the first 2 x 10 before the first cut, then only the known one: the other 979 are
    # counted, never built
    assert builder.materialised == 21
    assert batch.dropped == 990 and len(batch) == 10
    apps = [lb["app"] for lb in batch.labels]
    assert apps == [f"app{i:05d}" for i in range(9)] + ["app00990"]  # label order, known first
    assert batch.values[0, 0] == 0 and batch.values[-1, 0] == 990


def test_a_5000_series_answer_is_read_within_the_cap(monkeypatch):
    built: list[int] = []
    original = MatrixBuilder.batch

    def spy(self: MatrixBuilder) -> Any:
        built.append(self.materialised)
        return original(self)

    monkeypatch.setattr(MatrixBuilder, "batch", spy)
    server = StandIn(series=5000)
    try:
        registry = CollectorRegistry()
        settings = load_settings(
            prom_url=server.url, metrics=None, config=None, max_series_per_query=50
        )
        report = Detector(settings, queries=[BENCH], registry=registry).run_cycle()
        assert report.outcome == "ok", report.errors
        assert len(report.results["bench"]) == 50
        dropped = registry.get_sample_value(
            "aiops_detector_series_dropped_total", {"query": "bench"}
        )
        assert dropped == 4950
        assert built and max(built) <= 100, built
    finally:
        server.stop()


# -- item 11: firing events outlive a webhook outage and a restart ------------------------


class Webhook(BaseHTTPRequestHandler):
    """A stand-in webhook: answers ``server.status`` and records what it got."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.got.append((self.server.status, dict(self.headers), body))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def webhook(port: int, status: int, got: list | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Webhook)
    server.status, server.got, server.lock = status, [] if got is None else got, threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def firing_ids(got: list, status: int | None = None) -> list[str]:
    return [
        json.loads(body)["id"]
        for st, _, body in list(got)
        if json.loads(body)["status"] == "firing" and (status is None or st == status)
    ]


def detector_process(env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    return subprocess.Popen(
        [*aiops_command(), "detect"], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def test_a_firing_event_outlives_a_webhook_outage_and_a_detector_kill_9(tmp_path):
    prom = StandIn(series=2, jump_at=time.time() - 900)  # both series doubled 15 min ago
    hook_port = free_port()
    got: list = []
    hook = webhook(hook_port, 503, got)  # the webhook is down: 503
    env = detector_env(
        PROM_URL=prom.url,
        AIOPS_METRICS="bench=bench_value",
        AIOPS_INTERVAL_SECONDS="1",
        AIOPS_HTTP_HOST="127.0.0.1",
        AIOPS_HTTP_PORT=str(free_port()),
        RUNBOOK_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/anomalies",
        RUNBOOK_WEBHOOK_SECRET=SECRET,
        AIOPS_LOG_LEVEL="INFO",
    )
    log = tmp_path / "detector.log"
    first = detector_process(env, log)
    second = None
    try:
        # both onsets were posted and answered 503, and posted again (kept, retried)
        poll(
            lambda: len(set(firing_ids(got, 503))) == 2 and len(firing_ids(got, 503)) >= 4,
            timeout=90,
            what=f"firing events retried through the outage\n{log.read_text()[-2000:]}",
        )
        ids = set(firing_ids(got, 503))
        first.kill()  # kill -9: nothing is flushed at exit
        first.wait(30)
        hook.shutdown()
        hook.server_close()  # now the webhook is not even listening
        second = detector_process(env, log)
        poll(
            lambda: (
                "webhook unreachable, event kept" in log.read_text().split("detector started")[-1]
            ),
            timeout=90,
            what=f"the restarted detector retrying\n{log.read_text()[-2000:]}",
        )
        assert not got or all(st == 503 for st, _, _ in got)
        hook = webhook(hook_port, 200, got)  # the webhook is back
        poll(
            lambda: set(firing_ids(got, 200)) == ids,
            timeout=90,
            what=f"the firing events delivered after the outage\n{log.read_text()[-2000:]}",
        )
        for st, headers, body in got:
            if st == 200:
                assert (
                    verify_event(
                        SECRET,
                        headers[TIMESTAMP_HEADER],
                        headers[SIGNATURE_HEADER],
                        body,
                        time.time(),
                    )
                    is None
                )
        # the restarted detector kept the onsets: no second firing event with another id
        assert set(firing_ids(got)) == ids
        print(f"events re-sent after the webhook outage: {len(set(firing_ids(got, 200)))}")
    finally:
        stop_process(first)
        stop_process(second)
        hook.shutdown()
        hook.server_close()
        prom.stop()


def _result(app: str) -> SimpleNamespace:
    return SimpleNamespace(
        metric="latency_p99",
        labels={"app": app},
        score=0.9,
        reasons=[],
        value=2.0,
        baseline=1.0,
        started_at=1000.0,
        observed_at=1060.0,
        model_version="v1",
    )


def test_a_resolved_event_supersedes_a_waiting_firing_one_and_the_queue_is_bounded():
    port = free_port()
    got: list = []
    hook = webhook(port, 503, got)
    registry = CollectorRegistry()
    metrics = DetectorMetrics(registry)
    n = Notifier(
        f"http://127.0.0.1:{port}/anomalies", SECRET, backoff=0.05, max_backoff=0.2, metrics=metrics
    )
    value = registry.get_sample_value
    try:
        n.send(anomaly_event(_result("a"), "firing", 2000.0))
        poll(
            lambda: value("aiops_detector_webhook_events_total", {"result": "retried"}) >= 2,
            timeout=30,
        )
        n.send(anomaly_event(_result("a"), "resolved", 2100.0))
        poll(
            lambda: value("aiops_detector_webhook_events_total", {"result": "superseded"}) == 1,
            timeout=30,
        )
        hook.status = 200  # type: ignore[attr-defined]
        assert n.drain(30)
        delivered = [json.loads(b)["status"] for st, _, b in got if st == 200]
        assert delivered == ["resolved"]
        # bounded: 5 events while the webhook is down, 3 kept, the 2 oldest dropped
        hook.status = 503  # type: ignore[attr-defined]
        n.max_queue = 3
        for app in "bcdef":
            n.send(anomaly_event(_result(app), "firing", 2000.0))
        assert value("aiops_detector_webhook_queue_dropped_total") == 2
        assert value("aiops_detector_webhook_queue_depth") == 3
        # a 4xx is not retried
        hook.status = 422  # type: ignore[attr-defined]
        assert n.drain(30)
        assert value("aiops_detector_webhook_events_total", {"result": "refused"}) == 3
    finally:
        n.close()
        hook.shutdown()
        hook.server_close()
