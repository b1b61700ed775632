"""The detector against a real Prometheus scraping the demo workload.

Prometheus is Debian's binary on a free loopback port, backfilled with hours of
the workload's history (promtool), in which two incidents are already under way:
checkout's latency tripled 20 minutes ago and payments answers 8% 5xx since 15
minutes. Everything else is healthy.
"""

from __future__ import annotations

import json
import signal
import subprocess

import httpx
import pandas as pd
import pytest

from aiops.core.settings import load_settings
from detector.cycle import Detector
from detector.service import create_app
from tests.integration.conftest import (
    ServiceThread,
    aiops_command,
    detector_env,
    poll,
    run_aiops,
    start_prometheus,
)

pytestmark = pytest.mark.integration

EXPECTED = {
    ("latency_p99", "checkout"): "level_shift",
    ("success_rate", "payments"): "level_shift",
    ("error_budget_burn", "payments"): "level_shift",
}


def settings_for(url: str, **kw):
    return load_settings(prom_url=url, metrics=None, config=None, **kw)


def test_detector_flags_the_incidents_and_only_them(demo_stack, monkeypatch):
    for var in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    det = Detector(settings_for(demo_stack.prometheus.url))
    assert all(err is None for err in det.check_queries().values())
    report = det.run_cycle()
    assert report.outcome == "ok", report.errors
    results = report.all_results()
    # every catalogue query found the demo's series: 3 apps for SLOs, 1 app per KPI
    counts = {q: len(rs) for q, rs in report.results.items()}
    assert counts == {
        "success_rate": 3,
        "latency_p99": 3,
        "error_budget_burn": 3,
        "checkouts": 1,
        "revenue": 1,
        "sessions": 1,
    }
    assert all(r.status == "ok" for r in results)
    flagged = {(r.metric, r.labels["app"]): r for r in results if r.anomalous}
    assert set(flagged) == set(EXPECTED), {k: v.reasons for k, v in flagged.items()}
    for key, reason in EXPECTED.items():
        r = flagged[key]
        assert reason in {x.reason for x in r.reasons}
        assert r.score >= 1.0  # calibrated: at least 1 while anomalous
        assert 0.0 < r.forest_score <= 1.0
        assert r.labels["namespace"] == "demo"
    latency = flagged[("latency_p99", "checkout")]
    assert latency.value > 2 * latency.baseline  # tripled latency, seen in seconds


def test_prometheus_scrapes_the_reasons_back(demo_stack, detector_port, monkeypatch):
    """The service's scheduler runs cycles; Prometheus scrapes /metrics; the reason is queryable."""
    for var in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    det = Detector(settings_for(demo_stack.prometheus.url, interval_seconds=2))
    with ServiceThread(create_app(det), detector_port) as svc:
        health = poll(
            lambda: httpx.get(f"{svc.url}/healthz").status_code == 200,
            timeout=60,
            what="healthz 200",
        )
        assert health
        promql = 'aiops_anomaly_info{metric="latency_p99", app="checkout", reason="level_shift"}'
        got = poll(lambda: demo_stack.prometheus.query(promql), timeout=60, what=promql)
        assert got[0]["metric"]["namespace"] == "demo"
        assert float(got[0]["value"][1]) == 1.0
        healthy = demo_stack.prometheus.query(
            'aiops_anomaly_current{metric="latency_p99", app="frontend"}'
        )
        assert healthy and float(healthy[0]["value"][1]) == 0.0
        body = httpx.get(f"{svc.url}/healthz").json()
        assert body["prometheus"]["up"] is True
        assert body["queries"]["latency_p99"]["anomalies"] == 1


def test_cli_once_json_and_table(demo_stack):
    env = detector_env()
    proc = run_aiops(
        "detect", "--once", "--format", "json", "--prom-url", demo_stack.prometheus.url, env=env
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {"metric", "labels", "value", "baseline", "score", "anomalous", "reasons"} <= set(
        rows[0]
    )
    anomalous = {(r["metric"], r["labels"]["app"]) for r in rows if r["anomalous"]}
    assert anomalous == set(EXPECTED)
    reason = next(r for r in rows if r["anomalous"])["reasons"][0]
    assert set(reason) == {"reason", "window", "zscore", "delta", "threshold"}

    proc = run_aiops("detect", "--once", "--prom-url", demo_stack.prometheus.url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ANOMALY" in proc.stdout and "level_shift" in proc.stdout
    assert "latency_p99" in proc.stdout


def test_invalid_promql_is_reported_by_name(demo_stack):
    env = detector_env(AIOPS_METRICS="broken=sum(rate(x[5m]);latency_p99")
    proc = run_aiops(
        "detect", "--once", "--format", "json", "--prom-url", demo_stack.prometheus.url, env=env
    )
    assert proc.returncode == 0  # the valid query still ran
    assert "query broken failed: bad_query" in proc.stderr
    assert {r["metric"] for r in json.loads(proc.stdout)} == {"latency_p99"}


def test_prometheus_outage_does_not_crash_and_recovers(binaries, demo_stack, tmp_path):
    """The real `aiops detect` process while its Prometheus is killed and restarted."""
    host, port = demo_stack.server.server_address[:2]
    prom = start_prometheus(
        tmp_path / "prom", demo_stack.history, {"demo": [f"{host}:{port}"]}, binaries
    )
    from demo.prometheus import free_port

    http_port = free_port()
    env = detector_env(
        PROM_URL=prom.url,
        AIOPS_INTERVAL_SECONDS="1",
        AIOPS_STALE_AFTER_SECONDS="4",
        AIOPS_PROM_TIMEOUT_SECONDS="2",
        AIOPS_PROM_RETRIES="0",
        AIOPS_HTTP_HOST="127.0.0.1",
        AIOPS_HTTP_PORT=str(http_port),
        AIOPS_METRICS="latency_p99",
    )
    log = (tmp_path / "detector.log").open("w")
    proc = subprocess.Popen([*aiops_command(), "detect"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        poll(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout=60, what="healthy")
        prom.kill()
        body = poll(
            lambda: (r := httpx.get(f"{url}/healthz")).status_code == 503 and r.json(),
            timeout=30,
            what="healthz 503 while Prometheus is down",
        )
        assert body["prometheus"]["up"] is False
        assert body["queries"]["latency_p99"]["error"].startswith("unreachable")
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            'aiops_detector_query_errors_total{kind="unreachable",query="latency_p99"}' in metrics
        )
        assert "aiops_detector_prometheus_up 0.0" in metrics
        assert proc.poll() is None  # still running
        prom.start()  # same port, same data
        poll(lambda: httpx.get(f"{url}/healthz").status_code == 200, timeout=60, what="recovered")
        assert "aiops_detector_prometheus_up 1.0" in httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        prom.stop()
        log.close()
    text = (tmp_path / "detector.log").read_text()
    assert code == 0, text
    assert "detector stopped" in text
    assert "Traceback" not in text


def test_backtest_replays_history_from_prometheus(demo_stack, tmp_path):
    """`aiops backtest --prom-url --query` replays the backfilled hours through the detector."""
    out = tmp_path / "replay"
    proc = run_aiops(
        "backtest",
        "--prom-url",
        demo_stack.prometheus.url,
        "--query",
        "latency_p99",
        "--start",
        "now-4h",
        "--end",
        "now",
        "--out",
        str(out),
        env=detector_env(),
    )
    assert proc.returncode == 0, proc.stderr
    files = {p.stem: p for p in out.rglob("*.csv")}
    assert len(files) == 3, files  # one per app
    frames = {name: pd.read_csv(path) for name, path in files.items()}
    checkout = next(f for name, f in frames.items() if "app=checkout" in name)
    others = [f for name, f in frames.items() if "app=checkout" not in name]
    assert len(checkout) >= 200  # 4 hours at the 60 s step
    assert {"timestamp", "value", "anomaly_score", "anomalous", "reasons"} <= set(checkout.columns)
    # the latency incident began 20 minutes ago: flagged at the end, with its reason
    tail = checkout.tail(10)
    assert tail["anomalous"].all(), tail
    assert tail["reasons"].str.contains("level_shift").any()
    assert (checkout["anomaly_score"] > 0).sum() >= 1
    for f in others:
        assert not f["anomalous"].tail(30).any()
