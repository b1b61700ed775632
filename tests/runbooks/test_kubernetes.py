"""The Kubernetes actions, with the real ``kubernetes`` client against a stand-in API server.

Every test checks the exact requests the client sent (verbs, paths, bodies) and
their effect on the stand-in's model (``tests/runbooks/kubeapi.py``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from aiops.core.signing import signed_headers
from runbooks.actions import ACTIONS, ActionError, ActionResult, KubeClients, Target, make_action
from runbooks.app import create_app
from tests.runbooks.conftest import READ, SECRET, anomaly
from tests.runbooks.kubeapi import MUTATING, KubeAPI, kube_clients

NS = "shop"
TARGET = Target(NS, "checkout", {"namespace": NS, "app": "checkout"})
PODS = f"/api/v1/namespaces/{NS}/pods"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/checkout"
SCALE = DEPLOYMENT + "/scale"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@pytest.fixture
def kubeapi():
    with KubeAPI() as api:
        yield api


@pytest.fixture
def kube(kubeapi):
    with kube_clients(kubeapi) as clients:
        yield clients


def run(kube: KubeClients, name: str, **params: Any) -> ActionResult:
    """Validates the params as the policy loader does, then runs the action."""
    action = make_action(name, ACTIONS[name].validate(params), timeout=5, clients=kube)
    return action.run(TARGET)


def eviction(name: str) -> tuple[str, str]:
    return ("POST", f"{PODS}/{name}/eviction")


def eviction_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": NS},
    }


def restart_patch(stamp: str) -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}


def scale_body(replicas: int, resource_version: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": "checkout", "namespace": NS, "resourceVersion": resource_version},
        "spec": {"replicas": replicas},
    }


def assert_recent_stamp(stamp: str, t0: float) -> None:
    """RFC 3339 UTC, like kubectl's, taken during the test."""
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert int(t0) <= when.timestamp() <= time.time() + 1


# -- restart_pods -----------------------------------------------------------------------


def test_restart_pods_evicts_every_matching_pod_and_never_deletes(kubeapi, kube):
    for name in ("checkout-a", "checkout-b", "checkout-c"):
        kubeapi.add_pod(NS, name, app="checkout")
    kubeapi.add_pod(NS, "cart-a", app="cart")
    kubeapi.add_pod("other", "checkout-x", app="checkout")

    result = run(kube, "restart_pods")

    assert result.result == "executed", result
    assert result.data["evicted"] == ["checkout-a", "checkout-b", "checkout-c"]
    assert kubeapi.calls() == [
        ("GET", PODS),
        eviction("checkout-a"),
        eviction("checkout-b"),
        eviction("checkout-c"),
    ]
    listing, *evictions = kubeapi.requests
    assert listing.query == {"labelSelector": ["app=checkout"]}
    assert [r.body for r in evictions] == [
        eviction_body(n) for n in ("checkout-a", "checkout-b", "checkout-c")
    ]
    assert "DELETE" not in {r.method for r in kubeapi.requests}
    assert kubeapi.pod_names(NS) == ["cart-a"]  # only the selected pods went
    assert kubeapi.pod_names("other") == ["checkout-x"]


def test_a_pdb_429_is_blocked_sends_no_delete_and_is_not_retried(kubeapi, kube):
    kubeapi.add_pod(NS, "checkout-a", app="checkout")
    kubeapi.add_pod(NS, "checkout-b", app="checkout")
    kubeapi.pdb_blocks.add((NS, "checkout-b"))

    result = run(kube, "restart_pods")

    assert result.result == "blocked", result
    assert result.data == {"evicted": ["checkout-a"], "blocked": ["checkout-b"], "already_gone": []}
    assert kubeapi.calls() == [("GET", PODS), eviction("checkout-a"), eviction("checkout-b")]
    assert [r.method for r in kubeapi.requests].count("DELETE") == 0
    assert kubeapi.pod_names(NS) == ["checkout-b"]  # the protected pod is still there


def test_every_eviction_refused_is_blocked_with_one_attempt_per_pod(kubeapi, kube):
    for name in ("checkout-a", "checkout-b"):
        kubeapi.add_pod(NS, name, app="checkout")
        kubeapi.pdb_blocks.add((NS, name))

    result = run(kube, "restart_pods")

    assert result.result == "blocked", result
    assert result.data["evicted"] == [] and result.data["blocked"] == ["checkout-a", "checkout-b"]
    assert [(r.method, r.path) for r in kubeapi.mutating()] == [
        eviction("checkout-a"),
        eviction("checkout-b"),
    ]
    assert kubeapi.pod_names(NS) == ["checkout-a", "checkout-b"]


def test_an_eviction_404_counts_as_done(kubeapi, kube):
    kubeapi.add_pod(NS, "checkout-a", app="checkout")
    kubeapi.add_pod(NS, "checkout-b", app="checkout")
    kubeapi.vanish_after_list(NS, "checkout-a")  # deleted between the list and the eviction

    result = run(kube, "restart_pods")

    assert result.result == "executed", result
    assert result.data == {"evicted": ["checkout-b"], "blocked": [], "already_gone": ["checkout-a"]}
    assert kubeapi.calls() == [("GET", PODS), eviction("checkout-a"), eviction("checkout-b")]
    assert kubeapi.pod_names(NS) == []


def test_no_matching_pod_fails_and_sends_nothing_else(kubeapi, kube):
    kubeapi.add_pod(NS, "cart-a", app="cart")

    result = run(kube, "restart_pods")

    assert result.result == "failed"
    assert "no pod matches app=checkout in shop" in result.detail
    assert kubeapi.calls() == [("GET", PODS)]


def test_a_refused_pod_list_is_failed_not_an_exception(kubeapi, kube):
    result = run(kube, "restart_pods", selector="app in ({app})")  # the stand-in answers 400

    assert result.result == "failed"
    assert "HTTP 400" in result.detail
    assert kubeapi.mutating() == []


# -- rollout_restart --------------------------------------------------------------------


def test_rollout_restart_patches_only_the_restarted_at_annotation(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", template_annotations={"team": "payments"})
    t0 = time.time()

    result = run(kube, "rollout_restart")

    assert result.result == "executed", result
    assert kubeapi.calls() == [("GET", DEPLOYMENT), ("PATCH", DEPLOYMENT)]
    patch = kubeapi.requests[1]
    stamp = result.data["restartedAt"]
    assert patch.body == restart_patch(stamp)  # nothing else in the body
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert_recent_stamp(stamp, t0)
    dep = kubeapi.deployments[(NS, "checkout")]
    assert dep.template_annotations == {"team": "payments", RESTARTED_AT: stamp}


def test_rollout_restart_refuses_a_paused_deployment(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", paused=True)

    result = run(kube, "rollout_restart")

    assert result.result == "blocked"
    assert "paused" in result.detail
    assert kubeapi.calls() == [("GET", DEPLOYMENT)]
    assert kubeapi.deployments[(NS, "checkout")].template_annotations == {}


def test_rollout_restart_of_a_missing_deployment_fails(kubeapi, kube):
    result = run(kube, "rollout_restart")

    assert result.result == "failed"
    assert "HTTP 404" in result.detail
    assert kubeapi.calls() == [("GET", DEPLOYMENT)]


# -- rollout_undo -------------------------------------------------------------------------

REPLICASETS = f"/apis/apps/v1/namespaces/{NS}/replicasets"
REVISION = "deployment.kubernetes.io/revision"


def releases(kubeapi, *, current: int = 3, paused: bool = False):
    """checkout at revision ``current`` (image checkout:<n>), with its earlier ReplicaSets
    and one of another owner that kubectl would ignore."""
    dep = kubeapi.add_deployment(
        NS,
        "checkout",
        image=f"checkout:{current}",
        paused=paused,
        annotations={REVISION: str(current), "team": "payments"},
    )
    for n in range(1, current + 1):
        kubeapi.add_revision(dep, n, f"checkout:{n}", **{"release": f"r{n}"})
    kubeapi.add_revision(dep, 9, "checkout:evil", owned=False)
    return dep


def test_rollout_undo_sends_the_previous_revisions_template_as_kubectl_does(kubeapi, kube):
    dep = releases(kubeapi)

    result = run(kube, "rollout_undo")

    assert result.result == "executed", result
    assert result.data["revision"] == 2 and "checkout:2" not in result.detail
    assert kubeapi.calls() == [("GET", DEPLOYMENT), ("GET", REPLICASETS), ("PATCH", DEPLOYMENT)]
    assert kubeapi.requests[1].query["labelSelector"] == ["app=checkout"]
    patch = kubeapi.requests[2]
    assert patch.content_type == "application/json-patch+json"
    template = {
        "metadata": {"labels": {"app": "checkout"}, "annotations": {}},
        "spec": {"containers": [{"name": "checkout", "image": "checkout:2"}]},
    }
    # the ReplicaSet's own annotations, the Deployment's revision kept (kubectl's rule)
    annotations = {REVISION: "3", "release": "r2"}
    assert patch.body == [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]
    assert (dep.image, dep.annotations) == ("checkout:2", annotations)


def test_rollout_undo_of_a_paused_deployment_or_without_history_sends_no_patch(kubeapi, kube):
    releases(kubeapi, paused=True)
    paused = run(kube, "rollout_undo")
    assert paused.result == "blocked" and "paused" in paused.detail
    assert kubeapi.mutating() == []
    kubeapi.replicasets.clear()
    kubeapi.deployments.clear()
    releases(kubeapi, current=1)
    alone = run(kube, "rollout_undo")
    assert alone.result == "blocked" and "no earlier revision" in alone.detail
    assert kubeapi.mutating() == []


def test_rollout_undo_when_the_template_already_matches_the_previous_one(kubeapi, kube):
    dep = releases(kubeapi)
    dep.image = "checkout:2"  # someone rolled back by hand already
    result = run(kube, "rollout_undo")
    assert result.result == "blocked" and "already runs revision 2" in result.detail
    assert kubeapi.mutating() == []


def test_rollout_undo_waits_for_a_human_unless_the_policy_says_otherwise(tmp_path):
    from runbooks.policy import parse_file, parse_inline

    (rule,) = parse_inline("latency_p99=rollout_undo")
    assert rule.risk == "high"
    path = tmp_path / "p.yaml"
    path.write_text(
        "default:\n"
        "  - {match: a, action: rollout_undo}\n"
        "  - {match: b, action: rollout_undo, risk: medium}\n"
        "  - {match: c, action: rollout_restart}\n"
    )
    rules = parse_file(path)["default"]
    assert [r.risk for r in rules] == ["high", "medium", "low"]


# -- scale_up / scale_down --------------------------------------------------------------


def test_scale_up_puts_replicas_plus_delta_with_the_read_resource_version(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", replicas=3, resource_version=7)

    result = run(kube, "scale_up", delta=2, max_replicas=10)

    assert result.result == "executed", result
    assert result.data == {"from": 3, "to": 5}
    assert kubeapi.calls() == [("GET", SCALE), ("PUT", SCALE)]
    assert kubeapi.requests[1].body == scale_body(5, "7")
    assert kubeapi.deployments[(NS, "checkout")].replicas == 5


def test_scale_up_clamps_to_max_replicas(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", replicas=9, resource_version=4)

    result = run(kube, "scale_up", delta=3, max_replicas=10)

    assert result.result == "executed"
    assert kubeapi.calls() == [("GET", SCALE), ("PUT", SCALE)]
    assert kubeapi.requests[1].body == scale_body(10, "4")
    assert kubeapi.deployments[(NS, "checkout")].replicas == 10


@pytest.mark.parametrize("replicas", [10, 12])  # at max_replicas, and above it (set by hand)
def test_scale_up_at_or_over_the_bound_is_blocked_without_a_put(kubeapi, kube, replicas):
    kubeapi.add_deployment(NS, "checkout", replicas=replicas)

    result = run(kube, "scale_up", delta=1, max_replicas=10)

    assert result.result == "blocked"
    assert result.data == {"replicas": replicas}
    assert kubeapi.calls() == [("GET", SCALE)]
    assert kubeapi.deployments[(NS, "checkout")].replicas == replicas  # never scaled down


def test_a_scale_conflict_fails_and_is_not_retried(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", replicas=3, resource_version=5)
    kubeapi.concurrent_write(NS, "checkout", replicas=6)  # lands between our GET and PUT

    result = run(kube, "scale_up", delta=1, max_replicas=10)

    assert result.result == "failed"
    assert "conflict" in result.detail
    assert kubeapi.calls() == [("GET", SCALE), ("PUT", SCALE)]  # exactly one PUT
    assert kubeapi.requests[1].body == scale_body(4, "5")
    assert kubeapi.deployments[(NS, "checkout")].replicas == 6  # the other writer's value


def test_scale_down_respects_min_replicas(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", replicas=3, resource_version=2)

    first = run(kube, "scale_down", delta=5, min_replicas=2)
    second = run(kube, "scale_down", delta=5, min_replicas=2)

    assert first.result == "executed" and first.data == {"from": 3, "to": 2}
    assert second.result == "blocked"
    assert kubeapi.calls() == [("GET", SCALE), ("PUT", SCALE), ("GET", SCALE)]
    assert kubeapi.requests[1].body == scale_body(2, "2")
    assert kubeapi.deployments[(NS, "checkout")].replicas == 2


def test_scale_down_below_min_replicas_is_blocked_and_never_scales_up(kubeapi, kube):
    kubeapi.add_deployment(NS, "checkout", replicas=0)

    result = run(kube, "scale_down", delta=1, min_replicas=1)

    assert result.result == "blocked"
    assert kubeapi.calls() == [("GET", SCALE)]
    assert kubeapi.deployments[(NS, "checkout")].replicas == 0


# -- through the webhook ----------------------------------------------------------------


def restart_policy(tmp_path: Path) -> Path:
    path = tmp_path / "k8s-policy.yaml"
    path.write_text(
        "shop.checkout:\n"
        "  - match: latency_p99\n"
        "    reason: level_shift\n"
        "    action: rollout_restart\n"
    )
    return path


class KubeHook:
    """The harness's settings, database and policy in an app that acts on the stand-in."""

    def __init__(self, hook: Any, kube: KubeClients) -> None:
        app = create_app(
            hook.settings, hook.engine, hook.policy, kube=kube, registry=CollectorRegistry()
        )
        self.client = TestClient(app)

    def post_event(self, event: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(event).encode()
        r = self.client.post("/anomalies", content=body, headers=signed_headers(SECRET, body))
        assert r.status_code == 200, r.text
        return r.json()

    def audit(self) -> list[dict[str, Any]]:
        r = self.client.get("/audit", params={"n": 5000}, headers=READ)
        assert r.status_code == 200, r.text
        return list(reversed(r.json()["rows"]))


@pytest.fixture
def kube_hook(make_hook, tmp_path, kube):
    made: list[KubeHook] = []

    def make(**overrides: Any) -> KubeHook:
        hook = KubeHook(make_hook(policy_file=restart_policy(tmp_path), **overrides), kube)
        hook.client.__enter__()
        made.append(hook)
        return hook

    yield make
    for hook in made:
        hook.client.__exit__(None, None, None)


def test_webhook_dry_run_audits_dry_run_and_sends_no_mutating_request(kubeapi, kube_hook):
    kubeapi.add_deployment(NS, "checkout")
    hook = kube_hook(autofix_dry_run=True)

    answer = hook.post_event(anomaly("ev-k8s-dry"))

    assert answer["decision"] == "dry_run"
    assert answer["detail"] == "rollout restart deployment/checkout in shop"
    rows = hook.audit()
    assert [r["kind"] for r in rows] == ["request", "incident_opened", "policy_match", "dry_run"]
    assert rows[-1]["action"] == "rollout_restart"
    assert [r for r in kubeapi.requests if r.method in MUTATING] == []
    assert kubeapi.deployments[(NS, "checkout")].template_annotations == {}


def test_webhook_without_dry_run_sends_exactly_the_restart_patch(kubeapi, kube_hook):
    kubeapi.add_deployment(NS, "checkout")
    hook = kube_hook(autofix_dry_run=False)
    t0 = time.time()

    answer = hook.post_event(anomaly("ev-k8s-live"))

    assert answer["decision"] == "executed", answer
    assert kubeapi.calls() == [("GET", DEPLOYMENT), ("PATCH", DEPLOYMENT)]
    executed = hook.audit()[-1]
    assert executed["kind"] == "executed" and executed["action"] == "rollout_restart"
    stamp = executed["details"]["restartedAt"]
    assert_recent_stamp(stamp, t0)
    (patch,) = kubeapi.mutating()
    assert patch.body == restart_patch(stamp)
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert kubeapi.deployments[(NS, "checkout")].template_annotations == {RESTARTED_AT: stamp}


def test_webhook_audits_a_paused_deployment_as_blocked(kubeapi, kube_hook):
    kubeapi.add_deployment(NS, "checkout", paused=True)
    hook = kube_hook(autofix_dry_run=False)

    answer = hook.post_event(anomaly("ev-k8s-paused"))

    assert answer["decision"] == "blocked"
    assert hook.audit()[-1]["kind"] == "blocked"
    assert kubeapi.calls() == [("GET", DEPLOYMENT)]


# -- parameters -------------------------------------------------------------------------


def test_kubernetes_params_are_checked_at_load_and_described_filled_in():
    for name in ("restart_pods", "rollout_restart", "scale_up"):
        with pytest.raises(ActionError, match=r"params\.deployment must be a non-empty string"):
            ACTIONS[name].validate({"deployment": 5})
        with pytest.raises(ActionError, match=r"params\.namespace must be a non-empty string"):
            ACTIONS[name].validate({"namespace": ""})
    evict = make_action("restart_pods", ACTIONS["restart_pods"].validate({}), timeout=1)
    assert evict.describe(TARGET) == "evict pods app=checkout in shop"
    with pytest.raises(ActionError, match="unsafe"):
        evict.describe(Target(NS, "check out"))
