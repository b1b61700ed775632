"""The runtime kill switch: halts per scope, shared by replicas and the CLI, kept across a
restart, audited, shown on /killswitch, /healthz and /metrics, and failing closed."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from runbooks import killswitch
from tests.integration.conftest import clean_env, run_aiops
from tests.runbooks.conftest import alerts, anomaly

ADMIN = "admin-token-for-tests"


def switch(hook, *, enabled: bool, scope: str = "*", reason: str = "db migration", **headers):
    return hook.client.post(
        "/killswitch",
        json={"enabled": enabled, "scope": scope, "reason": reason},
        headers={"Authorization": f"Bearer {ADMIN}", **headers},
    )


def other_app_event(event_id: str) -> dict:
    """An event the default policy acts on, in another namespace and app than checkout."""
    e = anomaly(event_id, metric="payments_errors", app="payments")
    e["labels"] = {"namespace": "bank", "app": "payments"}
    return e


def test_changing_the_switch_over_http_needs_the_admin_token(make_hook):
    hook = make_hook()  # no RUNBOOK_ADMIN_TOKEN
    r = switch(hook, enabled=False)
    assert r.status_code == 401 and "RUNBOOK_ADMIN_TOKEN is not set" in r.json()["error"]
    assert hook.client.get("/killswitch").json()["halts"] == []
    armed = make_hook(admin_token=ADMIN)
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        r = armed.client.post("/killswitch", json={"enabled": False, "reason": "x"}, headers=auth)
        assert r.status_code == 401, r.text
    refused = armed.audit(kind="unauthorized")
    assert hook.audit(kind="unauthorized")[0]["details"]["route"] == "/killswitch"
    # one row for the source's first refusal of the minute, the others counted (they
    # reach the audit as one aggregated row when the minute ends: tests/adversarial)
    assert len(refused) == 1 and refused[0]["details"]["route"] == "/killswitch"
    assert armed.metric("runbooks_refusals_total", endpoint="/killswitch", reason="bad_token") == 3
    assert armed.client.get("/killswitch").json()["halts"] == []  # nothing changed
    assert armed.post_event(anomaly()).json()["decision"] == "executed"


@pytest.mark.parametrize(
    "body, says",
    [
        ({"enabled": False, "scope": "shop.checkout.v2", "reason": "x"}, "scope"),
        ({"enabled": False, "scope": "", "reason": "x"}, "scope"),
        ({"enabled": False, "scope": "shop/*", "reason": "x"}, "scope"),
        ({"enabled": False}, "reason"),
        ({"enabled": False, "reason": ""}, "reason"),
        ({"enabled": "false", "reason": "x"}, "enabled"),
        ({"enabled": False, "reason": "x", "force": True}, "force"),
    ],
)
def test_a_bad_change_is_refused_422_naming_the_field(make_hook, body, says):
    hook = make_hook(admin_token=ADMIN)
    r = hook.client.post("/killswitch", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]
    assert hook.client.get("/killswitch").json()["halts"] == []


def test_a_halt_stops_every_action_until_it_is_resumed(make_hook):
    hook = make_hook(admin_token=ADMIN, cooldown_seconds=0)
    assert hook.post_event(anomaly("before")).json()["decision"] == "executed"
    assert hook.metric("runbooks_enabled") == 1.0

    r = switch(hook, enabled=False, reason="db migration", **{"X-Actor": "alice"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["changed"] is True and out["enabled"] is False and out["autofix_enabled"] is True
    assert [h["scope"] for h in out["halts"]] == ["*"]
    assert "alice" in out["halts"][0]["actor"] and out["halts"][0]["reason"] == "db migration"

    decided = hook.post_event(anomaly("during")).json()
    assert decided["decision"] == "skipped_disabled"
    assert "halted for * by" in decided["detail"] and "db migration" in decided["detail"]
    am = hook.post_alerts(alerts(fingerprint="fp-halted")).json()["alerts"][0]
    assert am["decision"] == "skipped_disabled"
    assert hook.runs() == ["checkout"]  # only the action from before the halt

    health = hook.client.get("/healthz").json()
    assert health["enabled"] is False and health["halted"] == ["*"]
    assert hook.metric("runbooks_enabled") == 0.0
    assert hook.metric("runbooks_halted", scope="*") == pytest.approx(out["halts"][0]["halted_at"])
    again = switch(hook, enabled=False, reason="twice")
    assert again.json()["changed"] is False  # halting a halted scope changes nothing

    r = switch(hook, enabled=True, reason="migration done")
    assert r.json()["changed"] is True and r.json()["enabled"] is True
    assert hook.post_event(anomaly("after")).json()["decision"] == "executed"
    assert hook.runs() == ["checkout", "checkout"]
    assert hook.metric("runbooks_enabled") == 1.0
    assert hook.metric("runbooks_halted", scope="*") is None

    halted, resumed = hook.audit(kind="halted"), hook.audit(kind="resumed")
    assert len(halted) == 1 and len(resumed) == 1  # the no-op halt wrote nothing
    assert halted[0]["details"] == {"scope": "*", "reason": "db migration"}
    assert "alice" in halted[0]["actor"]
    assert resumed[0]["details"]["reason"] == "migration done"
    assert resumed[0]["details"]["halted_for_seconds"] >= 0
    assert resumed[0]["details"]["halted_by"] == halted[0]["actor"]


@pytest.mark.parametrize("scope", ["shop.*", "*.checkout", "shop.checkout"])
def test_a_scoped_halt_stops_only_what_it_names(make_hook, scope):
    hook = make_hook(admin_token=ADMIN)
    assert switch(hook, enabled=False, scope=scope).status_code == 200
    stopped = hook.post_event(anomaly("in-scope")).json()
    assert stopped["decision"] == "skipped_disabled"
    assert f"halted for {scope}" in stopped["detail"]
    assert hook.post_event(other_app_event("elsewhere")).json()["decision"] == "executed"
    assert hook.runs() == ["payments"]
    health = hook.client.get("/healthz").json()
    assert health["enabled"] is True and health["halted"] == [scope]  # not halted everywhere
    row = hook.audit(kind="halted")[0]
    ns, _, app = scope.partition(".")
    assert row["namespace"] == (None if ns == "*" else ns)
    assert row["app"] == (None if app == "*" else app)


def test_the_master_setting_wins_over_a_resume(make_hook):
    hook = make_hook(admin_token=ADMIN, autofix_enabled=False)
    r = switch(hook, enabled=True, reason="let it run")
    assert r.status_code == 200 and r.json()["changed"] is False
    assert r.json()["enabled"] is False and r.json()["autofix_enabled"] is False
    decided = hook.post_event(anomaly()).json()
    assert decided["decision"] == "skipped_disabled"
    assert "RUNBOOK_AUTOFIX_ENABLED=false" in decided["detail"]
    assert hook.metric("runbooks_enabled") == 0.0
    assert hook.runs() == []


def test_an_approved_action_meets_a_halt_made_while_it_waited(make_hook):
    from tests.runbooks.test_approvals_policy_signing import _link, held

    hook = make_hook(risk="high", admin_token=ADMIN)
    details = held(hook)
    assert switch(hook, enabled=False, scope="shop.checkout").status_code == 200
    r = hook.client.get("/approve", params=_link(details["approve_url"])[1]).json()
    assert r["decision"] == "skipped_disabled" and "halted for shop.checkout" in r["detail"]
    assert hook.runs() == []


def test_replicas_the_cli_and_a_restart_share_one_switch(make_hook, tmp_path):
    """Two webhooks on one database, and ``aiops killswitch`` from another process."""
    db = f"sqlite:///{tmp_path}/shared.db"
    a = make_hook(admin_token=ADMIN, database_url=db)
    b = make_hook(admin_token=ADMIN, database_url=db)
    assert switch(a, enabled=False, reason="from replica a").status_code == 200
    assert b.post_event(anomaly("on-b")).json()["decision"] == "skipped_disabled"
    assert b.metric("runbooks_enabled") == 0.0  # b's scrape reads the shared state

    env = clean_env(AIOPS_DATABASE_URL=db, RUNBOOK_AUTOFIX_ENABLED="true")
    status = run_aiops("killswitch", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "halted * since" in status.stdout and "from replica a" in status.stdout
    resume = run_aiops("killswitch", "resume", "--reason", "cli says go", env=env)
    assert resume.returncode == 0 and "*: resumed" in resume.stdout, resume.stderr
    assert b.post_event(anomaly("after-cli")).json()["decision"] == "executed"
    halt = run_aiops("killswitch", "halt", "--scope", "bank.*", "--reason", "freeze", env=env)
    assert halt.returncode == 0 and "bank.*: halted" in halt.stdout, halt.stderr
    cli_rows = a.audit(kind="resumed") + a.audit(kind="halted")
    assert any(r["actor"].startswith("cli:") for r in cli_rows)

    a.close()
    b.close()
    restarted = make_hook(admin_token=ADMIN, database_url=db)  # a fresh start keeps the halt
    assert restarted.post_event(other_app_event("after-restart")).json()["decision"] == (
        "skipped_disabled"
    )
    assert restarted.client.get("/killswitch").json()["halts"][0]["scope"] == "bank.*"


def test_the_cli_refuses_a_bad_scope_and_an_unreachable_database_in_one_line(tmp_path):
    env = clean_env(AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    bad = run_aiops("killswitch", "halt", "--scope", "a.b.c", "--reason", "x", env=env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--scope" in bad.stderr
    env["AIOPS_DATABASE_URL"] = "postgresql+psycopg://aiops:hunter2@127.0.0.1:1/none"
    down = run_aiops("killswitch", "status", env=env)
    assert down.returncode != 0 and down.stderr.strip().count("\n") == 0, down.stderr
    assert "hunter2" not in down.stderr and "database" in down.stderr


def test_an_unreadable_switch_at_the_start_of_an_action_refuses_it(make_hook, monkeypatch):
    """The last check before an action reads the database; if that read fails the action
    does not run (fail closed) and the refusal is audited."""
    hook = make_hook(admin_token=ADMIN)
    real = killswitch.halt_for
    calls = {"n": 0}

    def flaky(conn, namespace, app):
        calls["n"] += 1
        if calls["n"] == 2:  # the decision's read passes, the read at the start fails
            raise OperationalError("SELECT", {}, Exception("connection lost"))
        return real(conn, namespace, app)

    monkeypatch.setattr(killswitch, "halt_for", flaky)
    decided = hook.post_event(anomaly()).json()
    assert calls["n"] == 2
    assert decided["decision"] == "skipped_disabled"
    assert "could not be read" in decided["detail"]
    assert hook.runs() == []
    assert "could not be read" in hook.audit(kind="skipped_disabled")[0]["details"]["why"]


def test_scopes_are_checked_and_ordered():
    assert killswitch.scopes_of("shop", "checkout") == [
        "*",
        "shop.*",
        "*.checkout",
        "shop.checkout",
    ]
    assert killswitch.scopes_of(None, "checkout") == ["*", "*.checkout"]
    for good in ("*", "shop.checkout", "shop.*", "*.checkout", "kube-system.core_dns"):
        assert killswitch.check_scope(good) == good
    for bad in ("", "shop", "*.*", "shop.checkout.x", ".checkout", "shop/app", "a" * 600):
        with pytest.raises(killswitch.ScopeError):
            killswitch.check_scope(bad)


def test_a_wrong_method_gets_405_listing_every_method_of_the_path(make_hook):
    hook = make_hook()
    r = hook.client.delete("/killswitch")
    assert r.status_code == 405 and r.json() == {"error": "method not allowed"}
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    missing = hook.client.get("/no-such-route")
    assert missing.status_code == 404 and "error" in missing.json()
