"""POST /changes: CI/CD announces a deploy, signed like the detector's events, stored
once per id in the feature store and audited."""

from __future__ import annotations

import json

from aiops.core.signing import signed_headers
from feature_store.store import FeatureStore
from tests.runbooks.conftest import SECRET


def post(hook, change: dict, *, secret: str = SECRET):
    body = json.dumps(change).encode()
    return hook.client.post("/changes", content=body, headers=signed_headers(secret, body))


def test_a_signed_deploy_is_stored_once_and_audited(make_hook):
    hook = make_hook()
    change = {"id": "ci-1", "service": "shop.payments", "description": "v1.2.3", "at": 1000.0}
    r = post(hook, change)
    assert r.status_code == 200, r.text
    assert r.json() == {"change": "ci-1", "service": "shop.payments", "recorded": True}
    again = post(hook, change)
    assert again.json()["recorded"] is False  # a replay is the same change
    (row,) = FeatureStore(hook.engine).changes(since=0)
    assert (row["service"], row["kind"], row["at"], row["source"]) == (
        "shop.payments",
        "deploy",
        1000.0,
        "webhook",
    )
    (audited,) = hook.audit(kind="change")
    assert (audited["namespace"], audited["app"]) == ("shop", "payments")
    assert audited["details"]["description"] == "v1.2.3"


def test_labels_name_the_service_and_the_time_defaults_to_now(make_hook):
    hook = make_hook()
    r = post(hook, {"id": "ci-2", "labels": {"namespace": "shop", "app": "checkout"}})
    assert r.json()["service"] == "shop.checkout"
    (row,) = FeatureStore(hook.engine).changes(since=0)
    assert abs(row["received_at"] - row["at"]) < 5


def test_an_unsigned_or_unnamed_change_is_refused_and_nothing_is_stored(make_hook):
    hook = make_hook()
    forged = post(hook, {"id": "x", "service": "shop.payments"}, secret="not-the-secret" * 3)
    assert forged.status_code == 401
    unnamed = post(hook, {"id": "y", "labels": {"app": "payments"}})
    assert unnamed.status_code == 422 and "name the service" in unnamed.json()["error"]
    odd = post(hook, {"id": "z", "service": "shop.payments", "kind": "reboot"})
    assert odd.status_code == 422 and odd.json()["error"].startswith("kind")
    assert FeatureStore(hook.engine).changes(since=0) == []
    assert hook.metric("runbooks_refusals_total", endpoint="/changes", reason="bad_signature")
