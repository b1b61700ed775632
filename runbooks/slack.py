"""Slack: approval requests with buttons, plain notifications, interactive callbacks.

Outgoing (:func:`pending_notifier`), for every action held for approval:

- with ``SLACK_BOT_TOKEN`` + ``SLACK_CHANNEL``: ``chat.postMessage`` (at
  ``SLACK_API_URL``) with what is held and two buttons, ``approve`` and ``reject``,
  whose value carries the approval id and the signed token for that decision;
- else with ``RUNBOOKS_SLACK_WEBHOOK``: a plain text with both links to that
  incoming webhook;
- else nothing.

Messages are sent from a background thread (timeout 5 s) so a slow or down Slack
never delays the request that held the action; failures are logged, never raised.

Incoming (``POST /slack/interactive``): the raw body is checked against Slack's v0
signature (``SLACK_SIGNING_SECRET``, 5-minute window) before anything is parsed:
401 (audited as ``unauthorized``) if missing, forged or stale. A clicker outside
``RUNBOOK_APPROVERS`` gets 403, also audited: the list is comma-separated Slack user
ids (compared with the click's ``user.id`` only) and ``@name`` usernames (compared
with ``user.username`` only; never with an id). When ``RUNBOOK_APPROVERS`` is unset,
anyone who can click the buttons may decide: the signed, single-use token in the
button is then the only authority, as for the ``/approve`` links.

Refused decisions (an ``ApprovalError``: already decided, expired, bad token) and a
database outage are answered with **200** and an error text, not with their HTTP
status: Slack shows any non-200 answer as a generic failure to the clicker, while
a 200 body (and the follow-up to ``response_url``) lets the message say what
happened. Only requests that did not come from Slack (401), a clicker who is not
allowed (403) and malformed payloads (400) get a non-200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from runbooks import auth
from runbooks.approvals import ApprovalError
from runbooks.approvals import decide as decide_approval
from runbooks.events import visible_nul
from runbooks.schemas import SlackReplyOut, ok

log = logging.getLogger("aiops.slack")

router = APIRouter()

SLACK_TIMEOUT = 5.0


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def _esc(text: Any) -> str:
    """Slack's mrkdwn escaping (only &, < and > are special)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _token(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlparse(url).query).get("token")
    return values[0] if values else None


def _post(url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """POST JSON; log (never raise) what went wrong."""
    try:
        r = httpx.post(url, json=payload, headers=headers, timeout=SLACK_TIMEOUT)
    except httpx.HTTPError as exc:
        log.error("slack post failed: %s", exc)
        return
    if r.status_code != 200:
        log.error("slack answered %d: %s", r.status_code, r.text[:200])
        return
    if r.headers.get("content-type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):
            body = r.json()
            if isinstance(body, dict) and body.get("ok") is False:
                log.error("slack refused the message: %s", body.get("error"))


def _in_background(url: str, payload: dict[str, Any], headers: dict[str, str] | None) -> None:
    threading.Thread(
        target=_post, args=(url, payload, headers), name="slack-post", daemon=True
    ).start()


def _summary(sig: Any, decision: Any) -> dict[str, str]:
    approval = decision.extra.get("approval", {})
    expires = approval.get("expires_at")
    return {
        "action": decision.action or "?",
        "target": f"{sig.namespace or '-'}/{sig.app or '-'}",
        "what": decision.extra.get("what") or decision.detail or "",
        "reasons": ", ".join(sig.reasons) or "-",
        "incident": decision.incident_id or "-",
        "signal": sig.name or "-",
        "risk": str(decision.extra.get("risk") or "-"),
        "expires": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)) if expires else "-",
    }


def approval_message(sig: Any, decision: Any, channel: str) -> dict[str, Any]:
    """The ``chat.postMessage`` body for one held action."""
    s = _summary(sig, decision)
    approval = decision.extra.get("approval", {})
    text = f"Approval needed: {s['action']} on {s['target']} ({s['signal']})"
    fields = [
        f"*Action*\n{_esc(s['action'])}",
        f"*Target*\n{_esc(s['target'])}",
        f"*Signal*\n{_esc(s['signal'])}",
        f"*Reasons*\n{_esc(s['reasons'])}",
        f"*Incident*\n{_esc(s['incident'])}",
        f"*Expires*\n{_esc(s['expires'])}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_esc(text)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if s["what"]:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"Would run: `{_esc(s['what'])}`"}],
            }
        )
    buttons = []
    for decision_name, label, style in (
        ("approve", "Approve", "primary"),
        ("reject", "Reject", "danger"),
    ):
        token = _token(approval.get(f"{decision_name}_url"))
        if token:
            value = json.dumps({"id": approval.get("id"), "token": token}, separators=(",", ":"))
            buttons.append(
                {
                    "type": "button",
                    "action_id": decision_name,
                    "text": {"type": "plain_text", "text": label},
                    "style": style,
                    "value": value,
                }
            )
    if buttons:
        blocks.append(
            {"type": "actions", "block_id": f"approval:{approval.get('id')}", "elements": buttons}
        )
    else:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "No buttons: RUNBOOK_APPROVAL_SECRET is not set on the webhook.",
                    }
                ],
            }
        )
    return {"channel": channel, "text": text, "blocks": blocks}


def webhook_message(sig: Any, decision: Any) -> dict[str, Any]:
    """The incoming-webhook body: plain text with both links."""
    s = _summary(sig, decision)
    approval = decision.extra.get("approval", {})
    lines = [
        f"Approval needed: {s['action']} on {s['target']} ({s['signal']})",
        f"Reasons: {s['reasons']} | incident: {s['incident']} | expires: {s['expires']}",
    ]
    if s["what"]:
        lines.append(f"Would run: {s['what']}")
    if approval.get("approve_url"):
        lines.append(f"Approve: {approval['approve_url']}")
        lines.append(f"Reject: {approval['reject_url']}")
    else:
        lines.append("No links: RUNBOOK_APPROVAL_SECRET is not set on the webhook.")
    return {"text": "\n".join(lines)}


def pending_notifier(settings: Any) -> Callable[[Any, Any], None] | None:
    """The callback the remediator calls for every held action (None: no Slack)."""
    bot = _secret(settings.slack_bot_token)
    channel = settings.slack_channel
    hook = _secret(settings.slack_webhook)
    if bot and channel:
        url = settings.slack_api_url.rstrip("/") + "/chat.postMessage"
        headers = {"Authorization": f"Bearer {bot}"}

        def post_message(sig: Any, decision: Any) -> None:
            _in_background(url, approval_message(sig, decision, channel), headers)

        return post_message
    if hook:

        def post_webhook(sig: Any, decision: Any) -> None:
            _in_background(hook, webhook_message(sig, decision), None)

        return post_webhook
    return None


def incident_message(sig: Any, decision: Any, channel: str) -> dict[str, Any]:
    """The ``chat.postMessage`` body for a new detector incident: its probable cause,
    the evidence, and two buttons for the cause's anomaly, "Real incident" and "Not an
    incident" (``POST /slack/interactive`` records the clicker's verdict)."""
    inc = sig.incident
    members = inc.member_count if inc.member_count is not None else len(inc.members)
    cause = inc.cause or f"{sig.namespace or '-'}/{sig.app or '-'}"
    text = f"Incident {decision.incident_id}: probable cause {cause} ({sig.metric})"
    evidence = "\n".join(f"• {_esc(line)}" for line in inc.evidence[:5]) or "-"
    onset = inc.members[0].onset if inc.members else None
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_esc(text)}*"}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{members} anomalous series; reasons: "
                f"{_esc(', '.join(sig.reasons) or '-')}\n{evidence}",
            },
        },
    ]
    if onset is not None:
        value = json.dumps(
            {"m": sig.metric, "l": dict(sig.labels), "s": onset}, separators=(",", ":")
        )
        blocks.append(
            {
                "type": "actions",
                "block_id": f"feedback:{decision.incident_id}",
                "elements": [
                    {
                        "type": "button",
                        "action_id": f"feedback:{verdict}",
                        "text": {"type": "plain_text", "text": label},
                        "value": value,
                    }
                    for verdict, label in (
                        ("incident", "Real incident"),
                        ("false_alarm", "Not an incident"),
                    )
                ],
            }
        )
    return {"channel": channel, "text": text, "blocks": blocks}


def incident_notifier(settings: Any) -> Callable[[Any, Any], None] | None:
    """The callback the remediator calls for every new detector incident (None without
    ``SLACK_BOT_TOKEN`` and ``SLACK_CHANNEL``: buttons need the Slack app)."""
    bot = _secret(settings.slack_bot_token)
    channel = settings.slack_channel
    if not (bot and channel):
        return None
    url = settings.slack_api_url.rstrip("/") + "/chat.postMessage"
    headers = {"Authorization": f"Bearer {bot}"}

    def post_incident(sig: Any, decision: Any) -> None:
        if sig.incident is not None:
            _in_background(url, incident_message(sig, decision, channel), headers)

    return post_incident


def approver_lists(approvers: str | None) -> tuple[set[str], set[str]]:
    """RUNBOOK_APPROVERS as (user ids, usernames): an entry is a Slack user id
    (``U024BE7LH``), or ``@name`` for a username."""
    ids: set[str] = set()
    usernames: set[str] = set()
    for entry in (approvers or "").split(","):
        entry = entry.strip()
        if entry.startswith("@") and entry[1:].strip():
            usernames.add(entry[1:].strip())
        elif entry and not entry.startswith("@"):
            ids.add(entry)
    return ids, usernames


def allowed(approvers: str | None, user: dict[str, Any]) -> bool:
    """True if RUNBOOK_APPROVERS is unset or names the user: the click's user id among
    the ids, or its username among the ``@`` names. An id is never compared with a
    name: a user whose username is spelled like an approver's id is not that approver."""
    ids, usernames = approver_lists(approvers)
    if not ids and not usernames:
        return True
    uid, username = user.get("id"), user.get("username")
    by_id = isinstance(uid, str) and uid in ids
    by_name = isinstance(username, str) and username in usernames
    return by_id or by_name


def _peer(request: Request) -> str:
    return f"http:{request.client.host}" if request.client else "http"


async def _audit(request: Request, actor: str, details: dict[str, Any]) -> None:
    rem = request.app.state.remediator
    try:
        await asyncio.to_thread(
            rem.audit.now,
            "unauthorized",
            None,
            actor=actor,
            details={"route": "/slack/interactive", **details},
        )
    except SQLAlchemyError:
        log.error("cannot audit a refused Slack request: database down")


def _reply(
    text: str, response_url: str | None, *, ok: bool, replace: bool | None = None
) -> JSONResponse:
    """200 for Slack, also sent to ``response_url``: a decision replaces the message
    (its buttons go), a refusal is shown to the clicker only; a verdict (``replace``
    False) is shown to the clicker only and leaves the buttons to the others."""
    replace = ok if replace is None else replace
    body = {
        "ok": ok,
        "replace_original": replace,
        "response_type": "in_channel" if replace else "ephemeral",
        "text": text,
    }
    if response_url and urlparse(response_url).scheme in ("http", "https"):
        _in_background(response_url, body, None)
    return JSONResponse(body)


@router.post(
    "/slack/interactive",
    responses=ok(SlackReplyOut, 400, 401, 403, 413),
    dependencies=[Depends(auth.slack_signed)],
)
async def interactive(request: Request) -> Response:
    body = await request.body()  # the raw bytes, as signed and checked by auth.slack_signed
    settings = request.app.state.settings
    rem = request.app.state.remediator
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        # NULs written out, as for the other inputs (PostgreSQL's text refuses them)
        payload = visible_nul(json.loads(form["payload"][0]))
        if payload.get("type") != "block_actions":
            raise ValueError(f"unsupported payload type {payload.get('type')!r}")
        user = payload.get("user") or {}
        if not isinstance(user, dict):
            raise ValueError("user is not an object")
        action = payload["actions"][0]
        decision = action["action_id"]
        value = visible_nul(json.loads(action["value"]))
        if decision.startswith("feedback:"):
            from runbooks.events import FeedbackIn

            verdict = decision.split(":", 1)[1]
            feedback = FeedbackIn(
                metric=value["m"], labels=value["l"], started_at=value["s"], verdict=verdict
            )
        elif decision not in ("approve", "reject"):
            raise ValueError(f"unknown action_id {decision!r}")
        else:
            approval_id, token = str(value["id"]), str(value["token"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as exc:
        return JSONResponse({"error": f"malformed Slack payload: {exc}"}, status_code=400)
    who = str(user.get("username") or user.get("name") or user.get("id") or "unknown")
    actor = f"slack:{who}"
    response_url = payload.get("response_url")
    if decision.startswith("feedback:"):
        return await _verdict(request, feedback, user, who, actor, response_url)
    if not allowed(settings.approvers, user):
        why = f"{who} ({user.get('id')}) is not in RUNBOOK_APPROVERS"
        await _audit(request, actor, {"why": why, "approval": approval_id})
        return JSONResponse({"error": why}, status_code=403)
    try:
        d = await asyncio.to_thread(decide_approval, rem, approval_id, token, decision, actor)
    except ApprovalError as exc:
        return _reply(f"Could not {decision}: {exc}", response_url, ok=False)
    except SQLAlchemyError:
        log.error("database error on a Slack %s of %s", decision, approval_id)
        text = f"Could not {decision}: database unavailable, nothing was executed"
        return _reply(text, response_url, ok=False)
    verb = "approved" if decision == "approve" else "rejected"
    text = f"{d.action or 'action'} {verb} by {who}: {d.kind}"
    if d.detail:
        text += f" ({d.detail})"
    return _reply(text, response_url, ok=True)


async def _verdict(
    request: Request, fb: Any, user: dict[str, Any], who: str, actor: str, response_url: Any
) -> Response:
    """A "Real incident" / "Not an incident" click: the clicker's verdict on the
    incident's probable cause, once per person (RUNBOOK_APPROVERS, when set, names who
    may give one: a verdict changes what the detector pages for)."""
    from aiops.core.series import series_key
    from feature_store.store import FeatureStore
    from runbooks.feedback import _already, audit_of, give

    settings = request.app.state.settings
    rem = request.app.state.remediator
    if not allowed(settings.approvers, user):
        why = f"{who} ({user.get('id')}) is not in RUNBOOK_APPROVERS"
        await _audit(request, actor, {"why": why, "feedback": fb.verdict})
        return JSONResponse({"error": why}, status_code=403)
    series = series_key(fb.metric, fb.labels)
    store = FeatureStore(request.app.state.engine)
    try:
        if await asyncio.to_thread(_already, store, series, fb.started_at, actor, fb.verdict):
            return _reply(f"You already said {fb.verdict} of {series}", response_url, ok=False)
        out = await asyncio.to_thread(give, store, fb, actor, settings, time.time())
        if out is None:
            return _reply(f"No recorded anomaly of {series} to judge", response_url, ok=False)
        replaced, floors, episode = out
        row = audit_of(fb, actor, replaced, floors, episode, "slack")
        await asyncio.to_thread(rem.audit.now, "feedback", None, **row)
    except SQLAlchemyError:
        return _reply("Could not record it: database unavailable", response_url, ok=False)
    said = "real incident" if fb.verdict == "incident" else "not an incident"
    return _reply(f"Recorded: {who} says {said} ({series})", response_url, ok=True, replace=False)
