"""The webhook behind two real Alertmanagers (Debian's binary), fed through their API.

Two Alertmanagers that are not clustered stand for an HA pair: both deliver the
same alert, and the webhook must act once. Resolving closes the incident (and
verifies the fix); ``/ack`` creates a silence that Alertmanager then lists.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from demo.alertmanager import ALERTMANAGER, AlertmanagerProcess
from tests.conftest import require_binary
from tests.integration.conftest import poll
from tests.runbooks.conftest import TOKEN, served

pytestmark = pytest.mark.integration


def alert(starts: datetime, *, ends: datetime | None = None) -> dict:
    out = {
        "labels": {
            "alertname": "CheckoutDown",
            "namespace": "shop",
            "app": "checkout",
            "severity": "page",
        },
        "annotations": {"summary": "checkout answers 5xx"},
        "startsAt": starts.isoformat(),
        "generatorURL": "http://prometheus.example/graph",
    }
    if ends is not None:
        out["endsAt"] = ends.isoformat()
    return out


ADMIN = "admin-token-for-ack"


@pytest.mark.timeout(120)
def test_two_alertmanagers_one_action_resolve_and_ack(make_hook, tmp_path):
    require_binary(ALERTMANAGER)
    hook = make_hook(admin_token=ADMIN)
    with served(hook.app) as url:
        ams = [
            AlertmanagerProcess(tmp_path / f"am{i}", f"{url}/alertmanager", TOKEN).start()
            for i in range(2)
        ]
        try:
            hook.settings.alertmanager_url = ams[0].url  # /ack talks to the first one
            starts = datetime.now(timezone.utc) - timedelta(minutes=1)
            for am in ams:
                am.post_alerts([alert(starts)])

            def both() -> bool:
                kinds = hook.kinds()
                return "executed" in kinds and "duplicate" in kinds

            poll(
                both,
                timeout=30,
                what="both Alertmanagers' deliveries",
            )
            kinds = hook.kinds()
            assert kinds.count("executed") == 1, kinds
            assert kinds.count("duplicate") == 1, kinds
            assert hook.runs() == ["checkout"]
            request = hook.audit(kind="request")[0]
            assert request["alertname"] == "CheckoutDown"
            assert request["details"]["source"] == "alertmanager"

            # resolve: Alertmanager sends the resolved notification; no action runs
            for am in ams:
                am.post_alerts([alert(starts, ends=datetime.now(timezone.utc))])
            poll(lambda: "resolved" in hook.kinds(), timeout=30, what="resolved notification")
            assert "verified" in hook.kinds()
            assert hook.runs() == ["checkout"]
            assert hook.metric("runbooks_incidents_open") == 0.0

            # /ack: a silence in Alertmanager, listed by its API; only with the admin token
            ack = {"alertname": "CheckoutDown", "minutes": 30}
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                refused = hook.client.get("/ack", params=ack, headers=auth)
                assert refused.status_code == 401, refused.text
            assert ams[0].silences() == []
            assert hook.audit(kind="unauthorized")[-1]["details"]["route"] == "/ack"
            r = hook.client.get("/ack", params=ack, headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200, r.text
            silence_id = r.json()["silence_id"]
            listed = {s["id"]: s for s in ams[0].silences()}
            assert silence_id in listed
            matchers = listed[silence_id]["matchers"]
            assert {"name": "alertname", "value": "CheckoutDown"}.items() <= matchers[0].items()
            assert hook.kinds()[-1] == "acked"
        finally:
            for am in ams:
                am.stop()


def test_ack_without_alertmanager_or_with_a_bad_name_is_a_4xx(make_hook):
    hook = make_hook(admin_token=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert hook.client.get("/ack", params={"alertname": "X"}, headers=auth).status_code == 409
    bad_name = hook.client.get("/ack", params={"alertname": "a b"}, headers=auth)
    assert bad_name.status_code == 422
    zero = hook.client.get("/ack", params={"alertname": "X", "minutes": 0}, headers=auth)
    assert zero.status_code == 422


def test_ack_without_the_admin_token_is_401_and_says_which_setting(make_hook):
    hook = make_hook()  # no RUNBOOK_ADMIN_TOKEN: nobody can silence over HTTP
    r = hook.client.get("/ack", params={"alertname": "X"}, headers={"Authorization": "Bearer "})
    assert r.status_code == 401 and "RUNBOOK_ADMIN_TOKEN is not set" in r.json()["error"]
    assert hook.kinds() == ["unauthorized"]


@pytest.mark.timeout(120)
def test_a_burst_across_ten_apps_through_alertmanager_is_capped_by_the_blast_radius(
    make_hook, tmp_path
):
    """Ten apps page at once through a real Alertmanager: the fleet's budget (the
    defaults: 3 actions per 10 minutes) lets three actions run, the rest are audited
    ``skipped_blast_radius`` (a storm never becomes a restart storm)."""
    import json
    import sys

    from tests.runbooks.conftest import RECORDER

    require_binary(ALERTMANAGER)
    trace = tmp_path / "burst-trace.txt"
    policy = tmp_path / "burst-policy.yaml"
    argv = json.dumps([sys.executable, "-c", RECORDER, str(trace), "{app}"])
    policy.write_text(
        f"default:\n  - match: AppDown\n    action: command\n    params: {{argv: {argv}}}\n"
    )
    hook = make_hook(policy_file=policy)
    assert hook.rem.config.fleet_max == 3 and hook.rem.config.fleet_window == 600
    with served(hook.app) as url:
        am = AlertmanagerProcess(tmp_path / "am", f"{url}/alertmanager", TOKEN).start()
        try:
            starts = datetime.now(timezone.utc) - timedelta(minutes=1)
            burst = []
            for i in range(10):
                a = alert(starts)
                a["labels"].update(alertname="AppDown", app=f"app{i}")
                burst.append(a)
            am.post_alerts(burst)
            poll(
                lambda: (
                    len(hook.audit(kind="executed")) + len(hook.audit(kind="skipped_blast_radius"))
                    == 10
                ),
                timeout=60,
                what="ten decisions",
            )
            assert len(hook.audit(kind="executed")) == 3
            capped = hook.audit(kind="skipped_blast_radius")
            assert len(capped) == 7 and len({r["app"] for r in capped}) == 7
            assert len(trace.read_text().splitlines()) == 3
            assert hook.metric("runbooks_blast_radius_open") == 1.0
        finally:
            am.stop()
