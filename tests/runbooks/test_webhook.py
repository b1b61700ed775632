"""The webhook on a real SQLite database: signatures, dedupe, policy, guards, acting, audit."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers
from runbooks.events import AnomalyEvent, from_anomaly
from tests.runbooks.conftest import SECRET, TOKEN, alerts, anomaly


def test_a_signed_event_runs_the_policy_action_and_audits_every_step(make_hook):
    hook = make_hook()
    r = hook.post_event(anomaly())
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "executed"
    assert hook.runs() == ["checkout"]
    assert hook.kinds() == ["request", "incident_opened", "policy_match", "executed"]
    executed = hook.audit(kind="executed")[0]
    assert executed["action"] == "command" and executed["app"] == "checkout"
    assert executed["details"]["exit_code"] == 0
    assert hook.metric("runbooks_actions_total", action="command", result="executed") == 1


def test_bad_signatures_get_401_are_audited_and_run_nothing(make_hook):
    hook = make_hook()
    body = json.dumps(anomaly()).encode()
    good = signed_headers(SECRET, body)
    cases = {
        "wrong key": signed_headers("other-key", body),
        "changed body": good,  # signed for the original body, sent with one byte changed
        "stale": signed_headers(SECRET, body, now=time.time() - 301),
        # 302: the header keeps whole seconds (truncated), so +301 can land at +300.x
        "ahead": signed_headers(SECRET, body, now=time.time() + 302),
        "missing": {},
        "no signature": {TIMESTAMP_HEADER: good[TIMESTAMP_HEADER]},
    }
    for name, headers in cases.items():
        sent = body.replace(b"0.71", b"0.72") if name == "changed body" else body
        r = hook.client.post("/anomalies", content=sent, headers=headers)
        assert r.status_code == 401, (name, r.text)
    assert hook.runs() == []
    # the source's first refusal of the minute is a row of its own ...
    (first,) = hook.audit(kind="unauthorized")
    assert first["details"] == {"route": "/anomalies", "why": "signature does not match"}
    # ... the others one aggregated row, written when the minute is over
    hook.flush_refusals()
    first_again, aggregated = hook.audit(kind="unauthorized")
    assert first_again == first and aggregated["actor"] == "http:testclient"
    assert aggregated["details"]["aggregated"] == len(cases) - 1
    assert aggregated["details"]["reasons"] == {
        "bad_signature": 1,
        "missing_signature": 1,
        "missing_timestamp": 1,
        "stale_timestamp": 2,
    }
    refused = hook.metric("runbooks_refusals_total", endpoint="/anomalies", reason="bad_signature")
    assert refused == 2
    assert "request" not in hook.kinds()


def test_the_same_delivery_twice_acts_once(make_hook):
    hook = make_hook()
    first = hook.post_event(anomaly("ev-9"))
    second = hook.post_event(anomaly("ev-9"))
    assert first.json()["decision"] == "executed"
    assert second.json()["decision"] == "duplicate"
    assert hook.runs() == ["checkout"]
    assert hook.kinds().count("duplicate") == 1


def test_twenty_concurrent_copies_of_one_delivery_act_once(make_hook):
    hook = make_hook()
    event = AnomalyEvent.model_validate(anomaly("ev-burst"))
    with ThreadPoolExecutor(20) as pool:
        decisions = list(pool.map(lambda _: hook.rem.handle(from_anomaly(event)).kind, range(20)))
    assert decisions.count("executed") == 1
    assert decisions.count("duplicate") == 19
    assert hook.runs() == ["checkout"]


def test_repeated_events_of_one_series_are_one_incident_and_cooldown_holds(make_hook):
    hook = make_hook(cooldown_seconds=600)
    assert hook.post_event(anomaly("ev-a")).json()["decision"] == "executed"
    again = hook.post_event(anomaly("ev-b")).json()
    assert again["decision"] == "skipped_cooldown"
    incidents = {row["incident_id"] for row in hook.audit() if row["incident_id"]}
    assert len(incidents) == 1
    assert hook.kinds().count("incident_opened") == 1
    assert hook.runs() == ["checkout"]
    left = hook.metric(
        "runbooks_cooldown_remaining_seconds", target="shop/checkout", action="command"
    )
    assert 590 < left <= 600


def test_the_circuit_breaker_caps_actions_per_app_per_hour(make_hook):
    hook = make_hook(cooldown_seconds=0, circuit_max_hourly=2)
    decisions = []
    for i in range(4):  # four different incidents of one app
        decisions.append(hook.post_event(anomaly(f"ev-{i}")).json()["decision"])
        hook.post_event(anomaly(f"ev-{i}", status="resolved"))
    assert decisions == ["executed", "executed", "skipped_circuit", "skipped_circuit"]
    assert hook.runs() == ["checkout", "checkout"]
    assert hook.metric("runbooks_circuit_open", app="checkout") == 1.0


def test_kill_switch_and_dry_run_are_the_defaults(make_hook):
    off = make_hook(autofix_enabled=False, autofix_dry_run=True)
    assert off.post_event(anomaly()).json()["decision"] == "skipped_disabled"
    assert off.runs() == []
    dry = make_hook(autofix_enabled=True, autofix_dry_run=True)
    r = dry.post_event(anomaly()).json()
    assert r["decision"] == "dry_run" and r["detail"].startswith("command ")
    assert dry.runs() == []
    assert dry.audit(kind="dry_run")[0]["details"]["would"].endswith("checkout")


def test_no_matching_rule_is_audited_no_policy(make_hook):
    hook = make_hook()
    r = hook.post_event(anomaly(reason="volatility_spike")).json()
    assert r["decision"] == "no_policy"
    assert hook.kinds()[-1] == "no_policy"
    assert hook.runs() == []


def test_resolve_closes_the_incident_verifies_the_fix_and_counts_self_healing(make_hook):
    hook = make_hook()
    hook.post_event(anomaly("ev-1"))
    r = hook.post_event(anomaly("ev-1", status="resolved")).json()
    assert r["decision"] == "resolved"
    kinds = hook.kinds()
    assert kinds[-2:] == ["verified", "resolved"]
    resolved = hook.audit(kind="resolved")[0]
    assert resolved["details"]["self_healed"] is True
    assert resolved["details"]["time_to_resolve_seconds"] >= 0
    assert hook.metric("runbooks_incidents_open") == 0.0
    assert hook.metric("runbooks_self_healed_ratio") == 1.0
    assert hook.rem.pending_verifications() == 0


def test_a_fix_without_recovery_is_not_recovered_and_the_second_escalates(make_hook):
    hook = make_hook(cooldown_seconds=0, verify_seconds=30)
    hook.post_event(anomaly("ev-1"))
    assert hook.rem.check_verifications(now=time.time() + 60)
    assert hook.kinds()[-1] == "not_recovered"
    hook.post_event(anomaly("ev-2"))  # still the same incident: a second try
    hook.rem.check_verifications(now=time.time() + 60)
    assert hook.kinds()[-2:] == ["not_recovered", "escalated"]
    third = hook.post_event(anomaly("ev-3")).json()
    assert third["decision"] == "escalated"
    assert hook.runs() == ["checkout", "checkout"]


def test_alertmanager_v4_with_bearer_token(make_hook):
    hook = make_hook()
    r = hook.post_alerts(alerts())
    assert r.status_code == 200, r.text
    assert [a["decision"] for a in r.json()["alerts"]] == ["executed"]
    # a resend of the same notification (same fingerprint + startsAt) is a duplicate
    assert hook.post_alerts(alerts()).json()["alerts"][0]["decision"] == "duplicate"
    # a resolve never remediates: it closes the incident
    done = hook.post_alerts(alerts("resolved")).json()["alerts"][0]
    assert done["decision"] == "resolved"
    assert hook.runs() == ["checkout"]
    assert hook.post_alerts(alerts(), token="wrong").status_code == 401


def test_bad_requests_get_a_4xx_with_a_reason_and_nothing_runs(make_hook):
    hook = make_hook()
    bad = {k: v for k, v in alerts().items() if k != "alerts"}
    cases = [
        (
            hook.client.post(
                "/alertmanager", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}
            ),
            400,
        ),
        (hook.post_alerts({**alerts(), "version": "3"}), 422),
        (hook.post_alerts(bad), 422),
        (hook.post_event({**anomaly(), "status": "maybe"}), 422),
        (hook.post_event({"id": "x"}), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]
    assert hook.runs() == []
    assert hook.read("/audit", params={"n": 0}).status_code == 422


def test_alertmanager_is_never_answered_429_but_anomalies_are_rate_limited(make_hook):
    hook = make_hook(rate_limit=1.0, autofix_enabled=False)
    codes = {hook.post_alerts(alerts(fingerprint=f"fp{i}")).status_code for i in range(10)}
    assert codes == {200}
    statuses = [hook.post_event(anomaly(f"e{i}")).status_code for i in range(6)]
    assert 429 in statuses
    limited = next(r for r in (hook.post_event(anomaly("x")),) if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1


def test_database_down_before_commit_answers_503_and_runs_nothing(make_hook, tmp_path):
    hook = make_hook()
    hook.engine.dispose()
    db = tmp_path / "hook.db"
    db.rename(tmp_path / "moved.db")
    db.mkdir()  # the path is now a folder: every query fails
    r = hook.post_alerts(alerts(fingerprint="down"))
    assert r.status_code == 503 and "nothing was executed" in r.json()["error"]
    assert hook.post_event(anomaly("ev-down")).status_code == 503
    assert hook.runs() == []
    assert hook.client.get("/healthz").status_code == 503
    db.rmdir()
    (tmp_path / "moved.db").rename(db)
    retry = hook.post_alerts(alerts(fingerprint="down"))
    assert retry.status_code == 200 and retry.json()["alerts"][0]["decision"] == "executed"
    assert hook.runs() == ["checkout"]


def test_audit_filters(make_hook):
    hook = make_hook(autofix_enabled=False)
    hook.post_event(anomaly("a1"))
    hook.post_alerts(alerts())
    assert {r["kind"] for r in hook.audit(kind="skipped_disabled")} == {"skipped_disabled"}
    assert {r["alertname"] for r in hook.audit(alertname="CheckoutDown")} == {"CheckoutDown"}
    assert all("latency_p99" in json.dumps(r) for r in hook.audit(contains="latency_p99"))
    assert len(hook.audit(contains="latency_p99")) >= 4
    assert hook.audit(since=time.time() + 60) == []
    limited = hook.read("/audit", params={"n": 2}).json()
    assert limited["count"] == 2
    sig = {SIGNATURE_HEADER}
    assert sig  # header names are part of the public contract


def test_audit_export_writes_every_row_as_csv(make_hook):
    import csv
    import io

    from tests.integration.conftest import detector_env, run_aiops

    hook = make_hook(autofix_enabled=False)
    hook.post_event(anomaly("a1"))
    hook.post_event(anomaly("a1"))
    env = detector_env(AIOPS_DATABASE_URL=hook.settings.database_url)
    proc = run_aiops("audit", "export", "--since", "now-1h", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["kind"] for r in rows] == hook.kinds()
    assert rows[0]["time"].startswith("20") and rows[0]["metric"] == "latency_p99"
    assert json.loads(rows[0]["details"])["source"] == "anomalies"
    only = run_aiops("audit", "export", "--kind", "duplicate", env=env)
    assert [r["kind"] for r in csv.DictReader(io.StringIO(only.stdout))] == ["duplicate"]
    bad = run_aiops("audit", "export", "--since", "yesterday-ish", env=env)
    assert bad.returncode == 2 and "--since: not a time" in bad.stderr


def test_an_aiops_alert_and_the_detector_event_of_one_series_are_one_incident(make_hook):
    hook = make_hook()
    hook.post_event(anomaly("ev-1"))
    am = alerts(alertname="AIOpsAnomalyDetected")
    am["alerts"][0]["labels"].update(metric="latency_p99", reason="level_shift")
    del am["alerts"][0]["labels"]["severity"]
    decision = hook.post_alerts(am).json()["alerts"][0]
    assert decision["decision"] == "skipped_cooldown"  # the same target was just fixed
    incidents = {r["incident_id"] for r in hook.audit() if r["incident_id"]}
    assert len(incidents) == 1
    assert hook.kinds().count("incident_opened") == 1


def _aiops_alert(status: str, reason: str, fingerprint: str) -> dict:
    one = alerts(status, alertname="AIOpsAnomalyDetected", fingerprint=fingerprint)["alerts"][0]
    one["labels"].update(metric="latency_p99", reason=reason)
    del one["labels"]["severity"]
    return one


def test_the_incident_of_a_series_closes_with_its_last_firing_alert(make_hook):
    """AIOpsAnomalyDetected fires once per reason; reasons end one by one. The series'
    incident (and the verification of its fix) waits for the last one."""
    hook = make_hook()
    payload = alerts(alertname="AIOpsAnomalyDetected")
    payload["alerts"] = [
        _aiops_alert("firing", "level_shift", "fp-shift"),
        _aiops_alert("firing", "percent_change", "fp-pct"),
    ]
    decisions = [a["decision"] for a in hook.post_alerts(payload).json()["alerts"]]
    assert decisions == ["executed", "no_policy"]  # one incident; the rule wants level_shift
    # one reason ends, the other still fires (Alertmanager sends the whole group)
    payload["alerts"] = [
        _aiops_alert("resolved", "percent_change", "fp-pct"),
        _aiops_alert("firing", "level_shift", "fp-shift"),
    ]
    payload["status"] = "firing"
    first = [a["decision"] for a in hook.post_alerts(payload).json()["alerts"]]
    assert first == ["resolved", "duplicate"]
    assert "verified" not in hook.kinds()
    assert hook.metric("runbooks_incidents_open") == 1.0
    kept = hook.audit(kind="request")[-1]
    assert "still firing" in kept["details"]["incident_kept_open"]
    # the last reason ends: the incident closes and the fix is verified
    payload["alerts"] = [_aiops_alert("resolved", "level_shift", "fp-shift")]
    payload["status"] = "resolved"
    assert hook.post_alerts(payload).json()["alerts"][0]["decision"] == "resolved"
    assert hook.kinds()[-2:] == ["verified", "resolved"]
    resolved = hook.audit(kind="resolved")[-1]
    assert resolved["details"]["self_healed"] is True
    assert resolved["details"]["time_to_resolve_seconds"] >= 0
    assert hook.metric("runbooks_incidents_open") == 0.0


def test_the_blast_radius_caps_actions_across_all_apps(make_hook):
    hook = make_hook(cooldown_seconds=0, max_actions_per_window=2, action_window_seconds=600)
    decisions = [
        hook.post_event(anomaly(f"ev-{i}", app=f"app{i}", metric="payments_errors")).json()
        for i in range(3)
    ]  # three apps, each within its own breaker: the fleet's budget is two
    assert [d["decision"] for d in decisions] == ["executed", "executed", "skipped_blast_radius"]
    assert hook.runs() == ["app0", "app1"]
    (row,) = hook.audit(kind="skipped_blast_radius")
    assert row["app"] == "app2" and "2 actions across all apps" in row["details"]["why"]
    assert hook.metric("runbooks_blast_radius_actions") == 2.0
    assert hook.metric("runbooks_blast_radius_open") == 1.0
    assert hook.metric("runbooks_events_total", kind="skipped_blast_radius") == 1.0
