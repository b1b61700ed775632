"""Approvals (signed, bound, single-use, expiring), the policy grammar, and signatures."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import update

from aiops.core.errors import ConfigError
from aiops.core.signing import (
    approval_binding,
    check_approval_token,
    make_approval_token,
    sign_event,
    slack_signature,
    verify_event,
    verify_slack,
)
from feature_store import tables
from runbooks.policy import load_policy, parse_file, parse_inline
from tests.runbooks.conftest import anomaly


def _link(url: str) -> tuple[str, dict[str, str]]:
    parsed = urlparse(url)
    return parsed.path, {k: v[0] for k, v in parse_qs(parsed.query).items()}


def held(hook) -> dict:
    """The held action as the console lists it, with its links (the audit has none)."""
    r = hook.post_event(anomaly()).json()
    assert r["decision"] == "approval_pending", r
    (item,) = [p for p in hook.pending() if p["id"] == r["approval_id"]]
    return item


def test_high_risk_rules_wait_for_a_human_and_the_link_executes_once(make_hook):
    hook = make_hook(risk="high")
    details = held(hook)
    assert hook.runs() == []
    assert hook.metric("runbooks_pending_approvals") == 1.0
    path, query = _link(details["approve_url"])
    assert path == "/approve"
    r = hook.client.get(path, params=query)
    assert r.status_code == 200 and r.json()["decision"] == "executed"
    assert hook.runs() == ["checkout"]
    assert hook.kinds()[-2:] == ["approved", "executed"]
    again = hook.client.get(path, params=query)
    assert again.status_code == 409 and "single-use" in again.json()["error"]
    assert hook.runs() == ["checkout"]
    assert hook.metric("runbooks_pending_approvals") == 0.0


def test_require_approval_reject_link_and_a_token_for_another_action(make_hook):
    hook = make_hook(require_approval=True, cooldown_seconds=0)
    first = held(hook)
    hook.post_event(anomaly("ev-1", status="resolved"))
    r = hook.post_event(anomaly("ev-2")).json()
    assert r["decision"] == "approval_pending"
    other = hook.audit(kind="approval_pending")[-1]["details"]
    # the approve token of the first hold does not approve the second one
    _, q1 = _link(first["approve_url"])
    forged = hook.client.get("/approve", params={"id": other["id"], "token": q1["token"]})
    assert forged.status_code == 403 and "another action" in forged.json()["error"]
    # a reject token does not approve
    _, rq = _link(first["reject_url"])
    wrong = hook.client.get("/approve", params={"id": first["id"], "token": rq["token"]})
    assert wrong.status_code == 403
    rejected = hook.client.get("/reject", params=rq)
    assert rejected.status_code == 200 and rejected.json()["decision"] == "rejected"
    assert hook.runs() == []
    assert "unauthorized" in hook.kinds()


def test_an_expired_approval_is_refused_and_audited(make_hook):
    hook = make_hook(risk="high")
    details = held(hook)
    with hook.engine.begin() as conn:
        conn.execute(update(tables.approvals).values(expires_at=time.time() - 1))
    r = hook.client.get("/approve", params=_link(details["approve_url"])[1])
    assert r.status_code == 410
    assert hook.kinds()[-1] == "expired"
    assert hook.runs() == []


def test_an_approval_still_passes_the_kill_switch(make_hook):
    hook = make_hook(risk="high")
    details = held(hook)
    hook.rem.config.enabled = False  # the kill switch flipped while waiting
    r = hook.client.get("/approve", params=_link(details["approve_url"])[1])
    assert r.json()["decision"] == "skipped_disabled"
    assert hook.runs() == []


def test_tokens_are_bound_and_expire():
    b = approval_binding("a1", "scale_up", "shop/checkout", {"delta": 1})
    tok = make_approval_token("k", b, time.time() + 60, "approve")
    assert check_approval_token("k", tok, b, "approve", time.time()) is None
    other = approval_binding("a1", "scale_up", "shop/checkout", {"delta": 2})
    assert "another action" in check_approval_token("k", tok, other, "approve", time.time())
    assert check_approval_token("k", tok, b, "approve", time.time() + 120) == "token expired"
    assert "signature" in check_approval_token("other", tok, b, "approve", time.time())
    assert check_approval_token("k", "garbage", b, "approve", time.time()) == "malformed token"


def test_slack_published_test_vector():
    # the example of Slack's "Verifying requests from Slack" documentation
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    ts = "1531420618"
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
        b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect"
        b"&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554"
        b"%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack_signature(secret, ts, body) == expected
    now = float(ts) + 10
    assert verify_slack(secret, ts, expected, body, now) is None
    assert verify_slack(secret, ts, expected, body + b"x", now) == "signature does not match"
    assert verify_slack(secret, ts, expected, body, float(ts) + 301) is not None
    assert verify_slack(secret, ts, "v1=" + expected[3:], body, now) is not None


def test_event_signatures():
    body = b'{"id":"x"}'
    sig = sign_event("k", "100", body)
    assert verify_event("k", "100", sig, body, 100.0) is None
    assert verify_event("k", "100", sig, body, 401.0) is not None
    not_integer = "timestamp is not an integer number of seconds"
    assert verify_event("k", "abc", sig, body, 100.0) == not_integer


def test_inline_policy_grammar():
    rules = parse_inline(
        "crashloop=restart_pods;success_rate:trend_break=rollout_restart;"
        "latency_p99:level_shift=scale_up:+2"
    )
    assert [(r.match, r.reason, r.action) for r in rules] == [
        ("crashloop", None, "restart_pods"),
        ("success_rate", "trend_break", "rollout_restart"),
        ("latency_p99", "level_shift", "scale_up"),
    ]
    assert rules[2].params["delta"] == 2
    for bad, words in [
        ("crashloop", "expected NAME[:REASON]=ACTION"),
        ("x=reboot", "unknown action 'reboot'"),
        ("x=scale_up:lots", "expects a number"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_inline(bad)


def test_policy_file_scopes_in_order_and_errors_name_the_line(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "shop.checkout:\n  - {match: latency_p99, action: rollout_restart}\n"
        "shop.*:\n  - {match: latency_p99, action: scale_up, params: {delta: 1}}\n"
        "'*.payments':\n  - {match: latency_p99, action: restart_pods}\n"
        "default:\n  - {match: latency_p99, action: scale_down}\n"
    )
    policy = load_policy("other=restart_pods", path)
    pick = lambda ns, app: policy.match("latency_p99", [], ns, app).action  # noqa: E731
    assert pick("shop", "checkout") == "rollout_restart"
    assert pick("shop", "cart") == "scale_up"
    assert pick("bank", "payments") == "restart_pods"
    assert pick("bank", "ledger") == "scale_down"
    assert policy.match("other", [], "shop", "checkout").action == "restart_pods"
    assert policy.match("unknown", [], "shop", "checkout") is None

    path.write_text("default:\n  - match: x\n    action: command\n    params: {argv: []}\n")
    with pytest.raises(ConfigError, match=r"line 2: command: params.argv"):
        parse_file(path)
    path.write_text("default:\n  - {match: x, action: scale_up}\nbad key:\n  - {}\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'bad key'"):
        parse_file(path)
    path.write_text("default:\n  - {match: x, action: scale_up, risk: extreme}\n")
    with pytest.raises(ConfigError, match="risk must be low, medium or high"):
        parse_file(path)
    path.write_text("default: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_file(path)
