"""Kubernetes safety through the whole webhook (the stand-in API server of
tests/runbooks/kubeapi.py and the real ``kubernetes`` client), and the kill switch
flipped in the middle of a burst."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aiops.core.signing import signed_headers
from runbooks.app import create_app
from tests.adversarial.conftest import Burst, command_policy, served
from tests.integration.conftest import poll
from tests.runbooks.conftest import READ, SECRET, anomaly
from tests.runbooks.kubeapi import MUTATING, KubeAPI, kube_clients

NS = "shop"
PODS = f"/api/v1/namespaces/{NS}/pods"
SCALE = f"/apis/apps/v1/namespaces/{NS}/deployments/checkout/scale"

ACTIONS = {
    "restart_pods": "{}",
    "rollout_restart": "{}",
    "scale_up": "{delta: 2, max_replicas: 10}",
    "scale_down": "{delta: 1, min_replicas: 1}",
}


@pytest.fixture
def kubeapi():
    with KubeAPI() as api:
        api.add_pod(NS, "checkout-a", app="checkout")
        api.add_pod(NS, "checkout-b", app="checkout")
        api.add_deployment(NS, "checkout", replicas=3)
        yield api


@pytest.fixture
def kube(kubeapi):
    with kube_clients(kubeapi) as clients:
        yield clients


@pytest.fixture
def kube_webhook(make_hook, kube, tmp_path):
    clients: list[TestClient] = []

    def make(action: str, **overrides: Any) -> TestClient:
        policy = tmp_path / f"{action}.yaml"
        policy.write_text(
            "shop.checkout:\n"
            f"  - {{match: latency_p99, action: {action}, params: {ACTIONS[action]}}}\n"
        )
        hook = make_hook(policy_file=policy, **overrides)
        app = create_app(hook.settings, hook.engine, hook.policy, kube=kube)
        c = TestClient(app)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def post(c: TestClient, event_id: str) -> dict[str, Any]:
    body = json.dumps(anomaly(event_id)).encode()
    r = c.post("/anomalies", content=body, headers=signed_headers(SECRET, body))
    assert r.status_code == 200, r.text
    return r.json()


def audit(c: TestClient) -> list[dict[str, Any]]:
    return list(reversed(c.get("/audit", params={"n": 5000}, headers=READ).json()["rows"]))


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_dry_run_of_every_kubernetes_action_sends_no_mutating_request(
    kubeapi, kube_webhook, action
):
    c = kube_webhook(action, autofix_dry_run=True)
    answer = post(c, f"dry-{action}")
    assert answer["decision"] == "dry_run", answer
    assert [r for r in kubeapi.requests if r.method in MUTATING] == []
    assert kubeapi.pod_names(NS) == ["checkout-a", "checkout-b"]
    assert kubeapi.deployments[(NS, "checkout")].replicas == 3
    assert audit(c)[-1]["details"]["would"]


def test_a_pdb_429_through_the_webhook_is_audited_blocked_never_deleted_nor_retried(
    kubeapi, kube_webhook
):
    kubeapi.pdb_blocks.add((NS, "checkout-b"))
    c = kube_webhook("restart_pods", autofix_dry_run=False, cooldown_seconds=0)
    answer = post(c, "pdb-1")
    assert answer["decision"] == "blocked", answer
    row = audit(c)[-1]
    assert row["kind"] == "blocked" and row["details"]["blocked"] == ["checkout-b"]
    evictions = [r.path for r in kubeapi.requests if r.method == "POST"]
    assert evictions.count(f"{PODS}/checkout-b/eviction") == 1  # one attempt, no retry
    assert "DELETE" not in {r.method for r in kubeapi.requests}
    assert "checkout-b" in kubeapi.pod_names(NS)


def test_a_scale_conflict_through_the_webhook_fails_with_one_put_and_stays_in_bounds(
    kubeapi, kube_webhook
):
    kubeapi.concurrent_write(NS, "checkout", 9)  # another writer, right after the read
    c = kube_webhook("scale_up", autofix_dry_run=False)
    answer = post(c, "conflict-1")
    assert answer["decision"] == "failed", answer
    puts = [r for r in kubeapi.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].path == SCALE
    assert puts[0].body["metadata"]["resourceVersion"]  # the read version, as precondition
    assert kubeapi.deployments[(NS, "checkout")].replicas == 9  # the other writer's value
    assert puts[0].body["spec"]["replicas"] <= 10


# -- the kill switch ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_kill_switch_flipped_in_a_burst_stops_every_action_not_yet_started(
    make_hook, tmp_path: Path
):
    """60 incidents of one app race through a real server; after the fifth action ran
    the switch goes off. Exactly the actions that had started ran; every other event is
    audited ``skipped_disabled`` (at its decision, or right before its action)."""
    trace = tmp_path / "trace"
    hook = make_hook(
        policy_file=command_policy(tmp_path / "p.yaml", trace),
        cooldown_seconds=0,
        circuit_max_hourly=1000,
        circuit_max_daily=1000,
        max_actions_per_window=1000,
    )
    burst = Burst("kill")

    with (
        served(hook.app) as url,
        httpx.Client(timeout=60) as http,
        ThreadPoolExecutor(12) as pool,
    ):
        futures = [pool.submit(burst.post, http, url, i) for i in range(60)]
        poll(
            lambda: trace.exists() and len(trace.read_text().splitlines()) >= 5,
            timeout=60,
            every=0.002,
            what="five actions run",
        )
        started = hook.rem.disable()
        for f in futures:
            f.result()
    ran = trace.read_text().splitlines()
    decisions = Counter(burst.answers)
    assert 5 <= started < 60, decisions
    assert len(ran) == started  # nothing started after the flip
    assert decisions["executed"] == started
    assert decisions["skipped_disabled"] == 60 - started, decisions
    kinds = Counter(hook.kinds())
    assert kinds["executed"] == started and kinds["skipped_disabled"] == 60 - started
    late = [r for r in hook.audit(kind="skipped_disabled") if "before the action started" in str(r)]
    assert late, "no decided action was stopped at its start (the flip came too late?)"
    assert hook.metric("runbooks_enabled") == 0.0
