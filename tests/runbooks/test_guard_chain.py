"""One guard chain for a first decision and for an approved action, one audit
writer, the action built once, authentication before anything else."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from sqlalchemy import update

from feature_store import tables
from runbooks import actions
from runbooks.decision import MAX_ATTEMPTS
from tests.runbooks.conftest import anomaly


def _approve(hook, approval_id: str):
    url = urlparse(hook.link(approval_id))
    return hook.client.get(url.path, params={k: v[0] for k, v in parse_qs(url.query).items()})


def _held(hook) -> dict:
    r = hook.post_event(anomaly()).json()
    assert r["decision"] == "approval_pending", r
    return r


def test_an_approved_action_is_escalated_when_its_incident_was_escalated_meanwhile(make_hook):
    hook = make_hook(risk="high")
    r = _held(hook)
    with hook.engine.begin() as conn:  # two fixes failed while the action waited
        conn.execute(
            update(tables.incidents)
            .where(tables.incidents.c.id == r["incident_id"])
            .values(actions=MAX_ATTEMPTS, escalated=1)
        )
    done = _approve(hook, r["approval_id"])
    assert done.status_code == 200 and done.json()["decision"] == "escalated", done.text
    assert hook.runs() == []
    assert hook.kinds()[-2:] == ["approved", "escalated"]


def test_the_approved_path_audits_its_guard_rows_as_the_approver(make_hook):
    hook = make_hook(risk="high", autofix_dry_run=True)
    r = _held(hook)
    done = _approve(hook, r["approval_id"])
    assert done.status_code == 200 and done.json()["decision"] == "dry_run", done.text
    approved, dry = hook.audit()[-2:]
    assert (approved["kind"], dry["kind"]) == ("approved", "dry_run")
    assert approved["actor"].startswith("http:") and dry["actor"] == approved["actor"]
    # the dry run says what the approved action would do, as a first decision's does
    assert "would" in dry["details"] and "checkout" in dry["details"]["would"]


def test_the_kill_switch_stops_an_approved_action_with_what_it_would_have_done(make_hook):
    hook = make_hook(risk="high")
    r = _held(hook)
    hook.rem.config.enabled = False
    done = _approve(hook, r["approval_id"])
    assert done.json()["decision"] == "skipped_disabled"
    row = hook.audit(kind="skipped_disabled")[-1]
    assert "RUNBOOK_AUTOFIX_ENABLED" in row["details"]["why"] and row["details"]["would"]
    assert hook.runs() == []


def test_the_action_is_built_once_from_policy_match_to_its_run(make_hook, monkeypatch):
    built: list[object] = []
    original = actions.make_action

    def counting(*args, **kwargs):
        action = original(*args, **kwargs)
        built.append(action)
        return action

    monkeypatch.setattr("runbooks.engine.make_action", counting)
    hook = make_hook()
    r = hook.post_event(anomaly())
    assert r.json()["decision"] == "executed", r.text
    assert hook.runs() == ["checkout"]
    assert len(built) == 1


def test_every_audit_row_reaches_the_live_stream_once_committed(make_hook):
    hook = make_hook(cooldown_seconds=0)
    seen: list[dict] = []
    hook.rem.audit.on_audit = seen.append
    hook.post_event(anomaly("ev-1"))
    hook.post_event(anomaly("ev-1"))  # a replay: rolled back, replaced by "duplicate"
    hook.post_event(anomaly("ev-1", status="resolved"))
    kinds = [row["kind"] for row in seen]
    assert kinds == hook.kinds()[-len(kinds) :]
    assert "duplicate" in kinds and kinds.count("request") == 2


def test_authentication_comes_before_parameter_validation(make_hook):
    hook = make_hook()
    bad = hook.client.get("/audit", params={"n": 0})  # no read token, and a bad n
    assert bad.status_code == 401 and "read token" in bad.json()["error"]
    assert bad.headers["www-authenticate"].startswith("Bearer")
    assert hook.read("/audit", params={"n": 0}).status_code == 422
    ack = hook.client.get("/ack", params={"alertname": "x", "minutes": 0})
    assert ack.status_code == 401
