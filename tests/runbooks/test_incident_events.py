"""One webhook incident per detector incident, and at most one action chain for it.

The detector sends one event per incident: its probable cause's series on top,
every member listed, a new revision when a member joins or the cause moves. The
webhook opens one incident for it, acts on the probable cause only, lets an
Alertmanager notification about a member join the incident (a symptom is never acted
on), and a later revision never starts a second chain.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tests.runbooks.conftest import RECORDER, alerts


def member(app: str, metric: str, reason: str = "level_shift", onset: float = 0.0) -> dict:
    return {
        "metric": metric,
        "labels": {"namespace": "shop", "app": app},
        "service": f"shop.{app}",
        "onset": onset,
        "reasons": [reason],
        "score": 2.0,
    }


def incident_event(
    iid: str = "inc-1",
    *,
    revision: int = 1,
    status: str = "firing",
    cause: tuple[str, str, str] = ("payments", "payments_errors", "level_shift"),
    others: list[dict] | None = None,
) -> dict[str, Any]:
    """The detector's event for incident ``iid``: the cause's series on top."""
    now = time.time()
    app, metric, reason = cause
    members = [member(app, metric, reason, now - 120), *(others or [])]
    return {
        "id": iid,
        "metric": metric,
        "labels": {"namespace": "shop", "app": app},
        "score": 2.0,
        "reasons": [{"reason": reason, "window": "15m", "zscore": 6.0}],
        "value": 0.2,
        "baseline": 0.01,
        "started_at": now - 120,
        "observed_at": now,
        "model_version": "v1",
        "status": status,
        "incident": {
            "id": iid,
            "revision": revision,
            "cause": f"shop.{app}",
            "evidence": [f"shop.{app} {metric} {reason} started 40 s before shop.checkout's"],
            "members": members,
            "member_count": len(members),
        },
    }


def detector_alert(app: str, metric: str, fingerprint: str) -> dict[str, Any]:
    """Prometheus' AIOpsAnomalyDetected about one series, through Alertmanager."""
    payload = alerts(alertname="AIOpsAnomalyDetected", app=app, fingerprint=fingerprint)
    payload["alerts"][0]["labels"].update(metric=metric, reason="level_shift")
    return payload


STORM = [member("checkout", "latency_p99"), member("checkout", "success_rate")]


def incident_alert(iid: str, cause_app: str, fingerprint: str) -> dict[str, Any]:
    """Prometheus' AIOpsIncident about detector incident ``iid``, through Alertmanager."""
    payload = alerts(alertname="AIOpsIncident", fingerprint=fingerprint)
    labels = payload["alerts"][0]["labels"]
    del labels["namespace"], labels["app"]
    labels.update(
        incident=iid,
        probable_cause_namespace="shop",
        probable_cause_app=cause_app,
        probable_cause_metric="success_rate",
        reason="level_shift",
    )
    return payload


def test_a_storm_is_one_incident_acted_on_its_cause_once_and_members_join_it(make_hook):
    hook = make_hook(cooldown_seconds=0)
    first = hook.post_event(incident_event(others=STORM)).json()
    assert first["decision"] == "executed", first
    assert hook.runs() == ["payments"]  # the probable cause, not checkout
    iid = first["incident_id"]
    (opened,) = hook.audit(kind="incident_opened")
    assert opened["details"]["cause"] == "shop.payments" and opened["details"]["members"] == 3
    assert "40 s before" in opened["details"]["evidence"][0]

    # Alertmanager pages about checkout, a symptom: the alert joins, nothing runs
    down = hook.post_alerts(alerts(alertname="CheckoutDown", fingerprint="fp-down")).json()
    (joined,) = down["alerts"]
    assert joined["decision"] == "skipped_incident" and joined["incident_id"] == iid
    assert "symptom" in joined["detail"] and "shop.payments" in joined["detail"]
    # the detector's own alert about a member series joins the same incident
    series = hook.post_alerts(detector_alert("checkout", "latency_p99", "fp-lat")).json()
    assert series["alerts"][0]["incident_id"] == iid
    assert series["alerts"][0]["decision"] == "skipped_incident"
    assert len(hook.audit(kind="incident_joined")) == 2
    # AIOpsIncident, the page about the detector incident itself, is the same incident
    page = hook.post_alerts(incident_alert("inc-1", "payments", "fp-inc")).json()["alerts"][0]
    assert page["incident_id"] == iid and page["decision"] == "no_policy"

    # a member joins in the detector: the next revision is recorded, no second chain
    later = incident_event(revision=2, others=[*STORM, member("frontend", "success_rate")])
    update = hook.post_event(later).json()
    assert update["decision"] == "incident_updated" and update["incident_id"] == iid
    assert hook.post_event(later).json()["decision"] == "duplicate"  # a replay
    assert hook.runs() == ["payments"]
    assert hook.metric("runbooks_incidents_open") == 1.0

    # the incident ends: closed and verified; the next page is an incident of its own
    closed = hook.post_event(incident_event(status="resolved", revision=2)).json()
    assert closed["decision"] == "resolved" and closed["incident_id"] == iid
    assert hook.kinds()[-2:] == ["verified", "resolved"]
    assert hook.metric("runbooks_incidents_open") == 0.0
    again = alerts(alertname="CheckoutDown", fingerprint="fp-2", starts="2026-11-23T08:00:00Z")
    alone = hook.post_alerts(again).json()["alerts"][0]
    assert alone["decision"] == "executed" and alone["incident_id"] != iid
    assert hook.runs() == ["payments", "checkout"]


def test_an_alert_about_the_cause_continues_its_one_chain(make_hook):
    hook = make_hook()  # the default cooldown (15 minutes)
    first = hook.post_event(incident_event(others=STORM)).json()
    assert first["decision"] == "executed"
    page = hook.post_alerts(detector_alert("payments", "payments_errors", "fp-pay")).json()
    (joined,) = page["alerts"]
    # the same chain (the same action on the same target): its guards decide
    assert joined["incident_id"] == first["incident_id"]
    assert joined["decision"] == "skipped_cooldown", joined
    assert hook.runs() == ["payments"]


def test_the_cause_may_move_until_a_chain_starts_then_the_chain_stays(make_hook):
    hook = make_hook(cooldown_seconds=0)
    # first the frontend looked like the cause: no rule for it
    early = incident_event(cause=("frontend", "success_rate", "level_shift"))
    assert hook.post_event(early).json()["decision"] == "no_policy"
    # payments' anomaly arrives, and payments is what frontend depends on
    moved = incident_event(revision=2, others=[member("frontend", "success_rate")])
    second = hook.post_event(moved).json()
    assert second["decision"] == "executed", second
    assert hook.runs() == ["payments"]
    row = hook.audit(kind="incident_updated")[-1]
    assert row["details"]["cause_moved"] is True and row["details"]["cause"] == "shop.payments"
    # a later revision naming checkout cannot start a second chain
    back = incident_event(revision=3, cause=("checkout", "latency_p99", "level_shift"))
    third = hook.post_event(back).json()
    assert third["decision"] == "incident_updated"
    assert "command:shop/payments" in third["detail"]
    assert hook.runs() == ["payments"]


def test_a_policy_matches_on_the_probable_cause(make_hook, tmp_path):
    trace = tmp_path / "cause-trace.txt"
    policy = tmp_path / "cause-policy.yaml"
    argv = f'[{sys.executable!r}, "-c", {RECORDER!r}, {str(trace)!r}, "{{app}}"]'
    policy.write_text(
        "default:\n"
        '  - match: "*"\n'
        "    cause: shop.pay*\n"
        "    action: command\n"
        f"    params: {{argv: {argv}}}\n"
    )
    hook = make_hook(policy_file=policy, cooldown_seconds=0)
    payments = incident_event("inc-p", cause=("payments", "success_rate", "level_shift"))
    assert hook.post_event(payments).json()["decision"] == "executed"
    checkout = incident_event("inc-c", cause=("checkout", "success_rate", "level_shift"))
    assert hook.post_event(checkout).json()["decision"] == "no_policy"
    assert trace.read_text().splitlines() == ["payments"]
    (match,) = hook.audit(kind="policy_match")
    assert match["app"] == "payments"
    # with Alertmanager alone, AIOpsIncident names the cause the rule acts on
    page = hook.post_alerts(incident_alert("inc-am", "payments", "fp-am")).json()["alerts"][0]
    assert page["decision"] == "executed", page
    assert trace.read_text().splitlines() == ["payments", "payments"]


def test_a_page_about_a_member_that_came_first_becomes_the_detector_incident(make_hook):
    hook = make_hook()  # the default cooldown (15 minutes)
    page = hook.post_alerts(detector_alert("payments", "payments_errors", "fp-first")).json()
    (first,) = page["alerts"]
    assert first["decision"] == "executed"  # Alertmanager was quicker than the detector
    event = hook.post_event(incident_event(others=STORM)).json()
    # the same incident, now the detector's: its one chain is the page's, nothing new runs
    assert event["incident_id"] == first["incident_id"]
    assert event["decision"] == "incident_updated", event
    assert hook.runs() == ["payments"]
    checkout = hook.post_alerts(detector_alert("checkout", "latency_p99", "fp-co")).json()
    assert checkout["alerts"][0]["decision"] == "skipped_incident"
    assert checkout["alerts"][0]["incident_id"] == first["incident_id"]
    closed = hook.post_event(incident_event(status="resolved")).json()
    assert closed["decision"] == "resolved" and closed["incident_id"] == first["incident_id"]
