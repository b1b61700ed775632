"""NUL characters (``\\u0000``) in what the webhook receives, on SQLite and on PostgreSQL.

PostgreSQL's text and JSONB columns refuse NUL, SQLite stores it. A delivery carrying
one must behave the same on both: answered 200 (Alertmanager retries a 5xx forever and
drops a 4xx), decided and audited once, its replay a ``duplicate``, nothing lost. The
webhook writes every NUL of an incoming string as the six characters ``\\u0000``
(``runbooks.events.visible_nul``); every other character is kept as it came.

Before that, PostgreSQL answered every such delivery 503 ("PostgreSQL text fields cannot
contain NUL (0x00) bytes": Alertmanager retried forever) and lost the audit row of a
refused Slack click; SQLite stored the raw NUL in the audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from runbooks.events import (
    NUL_ESCAPE,
    AlertmanagerPayload,
    AnomalyEvent,
    from_alerts,
    from_anomaly,
    visible_nul,
)
from tests.runbooks.conftest import Hook, alerts, anomaly
from tests.runbooks.test_slack import SIGNING, click

NUL = "\x00"


@pytest.fixture(params=["sqlite", "postgresql"])
def hook_factory(request: pytest.FixtureRequest, make_hook: Any) -> Callable[..., Hook]:
    """Makes the webhook on SQLite, and on a real PostgreSQL database of its own."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        return lambda **overrides: make_hook(database_url=url, **overrides)
    return make_hook


@pytest.fixture
def hook(hook_factory: Callable[..., Hook]) -> Hook:
    return hook_factory()


def _strings(value: Any) -> list[str]:
    """Every string inside ``value`` (dict keys included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _no_raw_nul(rows: list[dict[str, Any]]) -> None:
    assert rows
    for row in rows:
        assert not [s for s in _strings(row) if NUL in s], row


def test_visible_nul_escapes_only_nul_and_leaves_other_text_alone():
    assert NUL_ESCAPE == "\\u0000" and len(NUL_ESCAPE) == 6
    assert visible_nul("a\x00b\x00") == "a\\u0000b\\u0000"
    plain = 'shop/"checkout"\\n\t\ufffd é'
    assert visible_nul(plain) is plain
    assert visible_nul({"k\x00": ["v\x00", 1, None, {"x": "\x00"}]}) == {
        "k\\u0000": ["v\\u0000", 1, None, {"x": "\\u0000"}]
    }


def test_signals_carry_no_nul_whatever_string_of_the_input_had_one():
    event = anomaly("ev\x00-1")
    event["metric"] = "latency\x00_p99"
    event["labels"]["pod\x00"] = "p\x00d"
    event["reasons"][0]["reason"] = "level\x00_shift"
    event["model_version"] = "v\x001"
    sig = from_anomaly(AnomalyEvent.model_validate(event))
    assert not [s for s in _strings(vars(sig)) if NUL in s]
    assert sig.dedup_key == "anomaly:ev\\u0000-1:firing"
    assert sig.labels["pod\\u0000"] == "p\\u0000d"
    payload = alerts(fingerprint="fp\x00")
    payload["receiver"] = "ai\x00ops"
    payload["alerts"][0]["labels"]["alertname"] = "Checkout\x00Down"
    payload["alerts"][0]["annotations"]["summary"] = "down\x00"
    (sig,) = from_alerts(AlertmanagerPayload.model_validate(payload))
    assert not [s for s in _strings(vars(sig)) if NUL in s]
    assert sig.alertname == "Checkout\\u0000Down"
    assert sig.details["summary"] == "down\\u0000"


def test_a_detector_event_with_nul_is_executed_once_and_audited_with_the_nul_visible(hook):
    event = anomaly("ev\x00-1")
    event["labels"]["pod"] = "checkout-7\x00f"
    event["reasons"][0]["note\x00"] = "extra\x00"  # an extra field: accepted, not stored
    event["model_version"] = "v\x001"
    first = hook.post_event(event)
    assert first.status_code == 200, first.text
    assert first.json()["decision"] == "executed"
    again = hook.post_event(event)
    assert again.status_code == 200, again.text
    assert again.json()["decision"] == "duplicate"
    assert hook.runs() == ["checkout"]
    rows = hook.audit()
    _no_raw_nul(rows)
    (request,) = [r for r in rows if r["kind"] == "request"]
    assert request["details"]["event_id"] == "ev\\u0000-1"
    assert request["details"]["labels"]["pod"] == "checkout-7\\u0000f"
    assert request["details"]["model_version"] == "v\\u00001"
    assert [r["kind"] for r in rows].count("duplicate") == 1
    # the same id without its NUL is another delivery
    assert hook.post_event(anomaly("ev-1")).json()["decision"] != "duplicate"


def test_nul_in_the_app_label_is_audited_visibly_and_refused_as_an_unsafe_target(hook):
    """The action gets the visible form, which its safe-value check refuses (a NUL in an
    argv would make ``subprocess`` raise): ``failed``/``bad_target``, audited, nothing run."""
    event = anomaly("ev-app", metric="payments_errors", app="check\x00out")
    r = hook.post_event(event)
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "failed"
    assert "check\\\\u0000out" in r.json()["detail"]  # repr() of the escaped value
    assert hook.runs() == []
    rows = hook.audit()
    _no_raw_nul(rows)
    assert {r["app"] for r in rows} == {"check\\u0000out"}
    assert [(r["kind"], r["result"]) for r in rows][-1] == ("failed", "bad_target")
    assert hook.post_event(event).json()["decision"] == "duplicate"


def test_an_alertmanager_notification_with_nul_is_executed_once_and_audited_visibly(hook):
    payload = alerts(fingerprint="fp\x00nul")
    payload["receiver"] = "ai\x00ops"
    payload["groupKey"] = "{}:{alertname=\x00}"
    alert = payload["alerts"][0]
    alert["labels"]["instance"] = "10.0.0.1\x00:9090"
    alert["labels"]["odd\x00key"] = "v"
    alert["annotations"]["summary"] = "checkout\x00 is down"
    alert["annotations"]["runbook\x00"] = "\x00"
    first = hook.post_alerts(payload)
    assert first.status_code == 200, first.text
    assert [a["decision"] for a in first.json()["alerts"]] == ["executed"]
    again = hook.post_alerts(payload)
    assert again.status_code == 200, again.text
    assert [a["decision"] for a in again.json()["alerts"]] == ["duplicate"]
    assert hook.runs() == ["checkout"]
    rows = hook.audit()
    _no_raw_nul(rows)
    (request,) = [r for r in rows if r["kind"] == "request"]
    details = request["details"]
    assert details["fingerprint"] == "fp\\u0000nul"
    assert details["receiver"] == "ai\\u0000ops"
    assert details["summary"] == "checkout\\u0000 is down"
    assert details["labels"]["instance"] == "10.0.0.1\\u0000:9090"
    assert details["labels"]["odd\\u0000key"] == "v"


def test_nul_in_the_alertname_is_audited_and_matches_no_rule(hook):
    payload = alerts(alertname="Checkout\x00Down", fingerprint="fp-name")
    r = hook.post_alerts(payload)
    assert r.status_code == 200, r.text
    assert [a["decision"] for a in r.json()["alerts"]] == ["no_policy"]
    resolved = alerts("resolved", alertname="Checkout\x00Down", fingerprint="fp-name")
    assert hook.post_alerts(resolved).status_code == 200
    assert hook.post_alerts(resolved).json()["alerts"][0]["decision"] == "duplicate"
    assert hook.runs() == []
    rows = hook.audit()
    _no_raw_nul(rows)
    assert {r["alertname"] for r in rows} == {"Checkout\\u0000Down"}
    assert [r["kind"] for r in rows if r["incident_id"]].count("resolved") == 1


def test_the_audit_query_with_nul_in_contains_answers_200(hook):
    """``contains`` finds a NUL as it is stored (written out), whether the search holds
    the NUL itself or its written-out form as the audit shows it."""
    assert hook.post_event(anomaly("ev\x00-q")).status_code == 200
    for needle in ("ev\x00-q", "ev\\u0000-q"):
        r = hook.read("/audit", params={"contains": needle})
        assert r.status_code == 200, r.text
        assert r.json()["count"] >= 1, needle
    assert hook.read("/audit", params={"contains": "ev-q"}).json()["count"] == 0


@pytest.mark.parametrize("param", ["kind", "alertname"])
def test_the_audit_query_with_nul_in_a_filter_answers_200(hook, param):
    assert hook.post_alerts(alerts(alertname="Checkout\x00Down")).status_code == 200
    value = "request" if param == "kind" else "Checkout\x00Down"
    r = hook.read("/audit", params={param: value, "contains": "Checkout\x00Down"})
    assert r.status_code == 200, r.text
    # the filter finds the rows stored with the NUL written out
    assert r.json()["count"] >= 1
    assert all("Checkout\\\\u0000Down" in json.dumps(row) for row in r.json()["rows"])


def test_a_signed_slack_click_with_nul_is_refused_and_audited_visibly(hook_factory):
    hook = hook_factory(slack_signing_secret=SIGNING, approvers="U111,@alice")
    value = json.dumps({"id": "ap\x00", "token": "t\x00"})
    stranger = click(hook, value, user={"id": "U9\x00", "username": "mal\x00lory"})
    assert stranger.status_code == 403, stranger.text
    (row,) = hook.audit(kind="unauthorized")
    _no_raw_nul([row])
    assert row["actor"] == "slack:mal\\u0000lory"
    assert row["details"]["approval"] == "ap\\u0000"
    approver = click(hook, value)
    assert approver.status_code == 200, approver.text
    assert "database" not in approver.json()["text"]
    assert approver.json()["ok"] is False
