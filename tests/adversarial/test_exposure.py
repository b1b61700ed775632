"""Exposure: the detector's label cardinality stays bounded, and secrets never show.

- A query that suddenly returns 10× more series than ``AIOPS_MAX_SERIES_PER_QUERY``
  exports at most the cap (the series it exported before are kept) and counts the rest
  in ``aiops_detector_series_dropped_total``.
- Every secret setting of the webhook and the detector, and a database or Prometheus
  password inside a URL, is driven through logs, audit rows, ``/healthz``, ``/metrics``,
  the OpenAPI, error answers and configuration errors — and found in none of them.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aiops.core.errors import ConfigError
from aiops.core.settings import load_settings
from aiops.core.signing import signed_headers
from demo.prometheus import free_port
from detector.catalogue import Query
from detector.cycle import Detector
from detector.source import PrometheusSource
from tests.detector.test_exporter import scripted_detector, series
from tests.runbooks.conftest import SECRET, anomaly

# -- label cardinality -----------------------------------------------------------------------


def _labels(n: int) -> list[dict[str, str]]:
    return [{"app": f"app-{i:03d}"} for i in range(n)]


def _exported(registry: CollectorRegistry) -> set[str]:
    return {
        s.labels["app"]
        for family in registry.collect()
        if family.name == "aiops_anomaly_current"
        for s in family.samples
    }


def test_a_query_returning_10x_more_series_stays_within_the_cap(monkeypatch):
    det, source, registry = scripted_detector(
        monkeypatch, interval_seconds=60, max_series_per_query=20
    )
    dropped = {"query": "latency_p99"}
    assert registry.get_sample_value("aiops_detector_series_dropped_total", dropped) == 0

    normal = _labels(15)
    source.rows["latency_p99"] = (normal, np.stack([series(i) for i in range(15)]))
    now = 1_700_000_000.0
    det.run_cycle(now)
    assert _exported(registry) == {lb["app"] for lb in normal}

    # the query suddenly returns 150 series (new ones sort before the old ones)
    burst = [{"app": f"aaa-{i:03d}"} for i in range(135)] + normal
    source.rows["latency_p99"] = (burst, np.stack([series(i) for i in range(150)]))
    for cycle in range(1, 4):
        det.run_cycle(now + 60 * cycle)
        shown = _exported(registry)
        assert len(shown) == 20
        assert {lb["app"] for lb in normal} <= shown  # the series it had are kept
        got = registry.get_sample_value("aiops_detector_series_dropped_total", dropped)
        assert got == 130 * cycle
        assert registry.get_sample_value("aiops_detector_series_scored", dropped) == 20
    for family in registry.collect():  # every anomaly family is bounded the same way
        if family.name.startswith("aiops_anomaly_"):
            apps = {s.labels.get("app") for s in family.samples}
            assert len(apps) <= 20, family.name


def test_the_cap_is_a_setting_with_a_clear_error():
    assert load_settings(metrics=None, config=None).max_series_per_query == 1000
    with pytest.raises(ConfigError, match="AIOPS_MAX_SERIES_PER_QUERY"):
        load_settings(metrics=None, config=None, max_series_per_query=0)


# -- secrets -----------------------------------------------------------------------------------

SECRETS = {
    "approval_secret": "approval-SECRET-7f3a",
    "alertmanager_token": "am-SECRET-91c2",
    "slack_bot_token": "xoxb-SECRET-44d1",
    "slack_signing_secret": "slack-SECRET-0b9e",
    "slack_webhook": "http://127.0.0.1:9/hooks/SECRET-5e77",
    "admin_token": "admin-SECRET-3d58",
    "read_token": "read-SECRET-71c0",
}


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def test_webhook_secrets_never_appear_in_logs_audit_health_or_errors(make_hook, caplog):
    caplog.set_level(logging.DEBUG)
    dead = f"http://127.0.0.1:{free_port()}"  # Slack is down: its failure gets logged
    hook = make_hook(
        risk="high", slack_channel="#ops", slack_api_url=dead, approvers="U1", **SECRETS
    )
    answers: list[str] = []

    def keep(r) -> None:
        answers.append(f"{r.status_code} {dict(r.headers)} {r.text}")

    body = json.dumps(anomaly("ev-1")).encode()
    keep(hook.client.post("/anomalies", content=body, headers=signed_headers("wrong", body)))
    keep(hook.client.post("/anomalies", content=body, headers=signed_headers(SECRET, body)))
    keep(hook.client.post("/anomalies", content=b"{", headers=signed_headers(SECRET, b"{")))
    keep(hook.post_alerts({"version": "4"}, token="not-the-token"))
    keep(hook.post_alerts({"version": "4"}, token=SECRETS["alertmanager_token"]))
    keep(hook.client.get("/approve", params={"id": "nope", "token": "x.y"}))
    held = hook.audit(kind="approval_pending")[-1]["details"]
    keep(hook.client.get("/approve", params={"id": held["id"], "token": "forged.token"}))
    keep(
        hook.client.post(
            "/slack/interactive",
            content=b"payload=%7B%7D",
            headers={
                "X-Slack-Request-Timestamp": str(int(time.time())),
                "X-Slack-Signature": "v0=0",
            },
        )
    )
    switch = {"enabled": False, "scope": "shop.*", "reason": "exposure test"}
    for token in ("wrong-admin-token", SECRETS["admin_token"]):
        keep(hook.client.post("/killswitch", json=switch, headers={"Authorization": token}))
        keep(
            hook.client.post(
                "/killswitch", json=switch, headers={"Authorization": f"Bearer {token}"}
            )
        )
    assert answers[-1].startswith("200"), answers[-1]  # the right token changed the switch
    paths = ("/healthz", "/metrics", "/openapi.json", "/console/pending", "/killswitch")
    for path in (*paths, "/audit?n=5000"):
        keep(hook.client.get(path))
    for path in ("/console/pending", "/audit?n=5000"):  # as a reader
        keep(hook.read(path))
    # the chat post fails in the background: wait for its log line
    deadline = time.monotonic() + 10
    while not any("slack" in r.name for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("slack" in r.name for r in caplog.records), "the failing Slack post was not logged"

    secrets = [*SECRETS.values(), SECRET]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert _leaks(logs, secrets) == []
    assert _leaks("\n".join(answers), secrets) == []
    assert _leaks(json.dumps(hook.audit(), default=str), secrets) == []
    assert len(answers) == 20 and "401" in answers[0]


def test_detector_secrets_and_url_passwords_never_appear(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    password, token = "prom-PASS-8c1d", "prom-TOKEN-2a9f"
    url = f"http://aiops:{password}@127.0.0.1:{free_port()}"  # nothing listens there
    settings = load_settings(prom_url=url, prom_token=token, prom_retries=0, prom_timeout_seconds=1)
    query = Query(name="latency_p99", promql="x", labels=("app",))
    source = PrometheusSource(url, token=token, timeout=1, retries=0)
    registry = CollectorRegistry()
    det = Detector(settings, queries=[query], source=source, registry=registry)
    report = det.run_cycle()
    assert report.errors["latency_p99"].kind == "unreachable"
    _, health = det.health()
    text = json.dumps(health) + "\n".join(r.getMessage() for r in caplog.records)
    text += str(report.errors["latency_p99"])
    text += generate_latest(registry).decode()
    assert "unreachable" in text
    assert _leaks(text, [password, token]) == []
    assert "aiops:***@127.0.0.1" in json.dumps(health)  # still says which server


@pytest.mark.parametrize(
    ("overrides", "secret"),
    [
        ({"database_url": "mysql://aiops:db-PASS-61f0@db/aiops"}, "db-PASS-61f0"),
        ({"database_url": "postgresql://aiops:db-PASS-61f0@db:notaport/aiops"}, "db-PASS-61f0"),
        ({"prom_url": "ftp://aiops:prom-PASS-8c1d@prometheus"}, "prom-PASS-8c1d"),
        ({"webhook_secret": ["not", "a", "string", "hook-SECRET-3d"]}, "hook-SECRET-3d"),
    ],
)
def test_configuration_errors_name_the_variable_but_not_the_secret(overrides, secret):
    with pytest.raises(ConfigError) as info:
        load_settings(metrics=None, config=None, **overrides)
    assert secret not in str(info.value)
    name = {"database_url": "AIOPS_DATABASE_URL", "prom_url": "PROM_URL"}.get(
        next(iter(overrides)), "RUNBOOK_WEBHOOK_SECRET"
    )
    assert str(info.value).startswith(name)
