"""``GET /console``: the live audit stream, the open incidents and the pending
approvals, on one page.

The page is self-contained (inline CSS and plain JavaScript, no external assets):
it follows ``GET /events`` (one ``audit`` SSE event per audit row), filters the
rows by kind and text, shows ``GET /console/incidents`` (the open incidents with
their probable cause, their one action chain and their members, and a banner while
the fleet's blast radius holds actions back), and lists ``GET /console/pending``
with Approve/Reject buttons that call the signed ``/approve`` / ``/reject`` links.

The page and its calls take the read credential (``runbooks.access``): the page
is opened once as ``/console?token=$RUNBOOK_READ_TOKEN`` (or through the small form
it answers 401 with, which posts the token instead of putting it in the URL); it
then sets an ``HttpOnly``, ``SameSite=Strict`` cookie and redirects to ``/console``,
so its ``EventSource`` and ``fetch`` calls are authenticated by that cookie.
``/console/pending`` hands out working approval links (the audit does not: it keeps
their tokens' digests only), so give the read token only to people who may approve.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError

from aiops.core.redact import redact_value
from aiops.core.signing import approval_binding, make_approval_token
from feature_store import tables
from runbooks import auth
from runbooks.access import read_denied
from runbooks.schemas import AnomaliesOut, IncidentsOut, PendingOut, ok

router = APIRouter()


def pending_approvals(engine: Any, secret: str | None, now: float) -> list[dict[str, Any]]:
    """Pending, unexpired approvals, oldest first, with relative approve/reject links."""
    a = tables.approvals
    q = select(a).where(and_(a.c.state == "pending", a.c.expires_at > now)).order_by(a.c.created_at)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for row in rows:
        req = row.request or {}
        item: dict[str, Any] = {
            "id": row.id,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "incident_id": row.incident_id,
            "namespace": row.namespace,
            "app": row.app,
            "target": row.target,
            "action": row.action,
            "params": redact_value(row.params),  # an http action's URL without its secrets
            "signal": req.get("alertname") or req.get("metric"),
            "reasons": req.get("reasons") or [],
        }
        if secret:
            binding = approval_binding(row.id, row.action, row.target, row.params)
            for decision in ("approve", "reject"):
                token = make_approval_token(secret, binding, row.expires_at, decision)
                item[f"{decision}_url"] = f"/{decision}?" + urlencode(
                    {"id": row.id, "token": token}
                )
        out.append(item)
    return out


@router.get(
    "/console/pending",
    responses=ok(PendingOut, 401, 503),
    dependencies=[Depends(auth.reader("/console/pending"))],
)
async def pending(request: Request) -> Response:
    settings = request.app.state.settings
    secret = settings.approval_secret.get_secret_value() if settings.approval_secret else None
    try:
        rows = await asyncio.to_thread(
            pending_approvals, request.app.state.engine, secret, time.time()
        )
    except SQLAlchemyError:
        return JSONResponse({"error": "database unavailable"}, status_code=503)
    body: dict[str, Any] = {"pending": rows, "count": len(rows)}
    if not secret:
        body["note"] = "RUNBOOK_APPROVAL_SECRET is not set: approvals cannot be decided"
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def open_incidents(engine: Any, settings: Any, now: float) -> dict[str, Any]:
    """The open incidents (newest first, at most 100) and the fleet's blast radius."""
    from runbooks.state import fleet_count

    t, m = tables.incidents, tables.incident_members
    with engine.connect() as conn:
        rows = conn.execute(
            select(t).where(t.c.status == "open").order_by(t.c.opened_at.desc()).limit(100)
        ).all()
        ids = [r.id for r in rows]
        members = dict(
            conn.execute(
                select(m.c.incident_id, func.count())
                .where(m.c.incident_id.in_(ids))
                .group_by(m.c.incident_id)
            ).all()
        )
        fleet = fleet_count(conn, now, settings.action_window_seconds)
    incidents = [
        {
            "id": r.id,
            "subject": r.subject,
            "opened_at": r.opened_at,
            "cause": r.cause,
            "chain": r.chain,
            "members": members.get(r.id, 0),
            "events": r.events,
            "actions": r.actions,
            "escalated": bool(r.escalated),
        }
        for r in rows
    ]
    budget = settings.max_actions_per_window
    return {
        "incidents": incidents,
        "count": len(incidents),
        "blast_radius": {
            "actions": fleet,
            "max": budget,
            "window_seconds": settings.action_window_seconds,
            "reached": fleet >= budget,
        },
    }


@router.get(
    "/console/incidents",
    responses=ok(IncidentsOut, 401, 503),
    dependencies=[Depends(auth.reader("/console/incidents"))],
)
async def incidents(request: Request) -> Response:
    try:
        body = await asyncio.to_thread(
            open_incidents, request.app.state.engine, request.app.state.settings, time.time()
        )
    except SQLAlchemyError:
        return JSONResponse({"error": "database unavailable"}, status_code=503)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def recent_anomalies(
    engine: Any, secret: str | None, person: str | None, now: float, hours: float = 24.0
) -> list[dict[str, Any]]:
    """The anomalies of the last ``hours`` (newest first, at most 100), each with the
    verdicts given on it and, for ``person``, its signed feedback links."""
    from runbooks.feedback import feedback_link

    t, fb = tables.anomalies, tables.feedback
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                t.c.series, t.c.metric, t.c.labels, t.c.started_at, t.c.ts, t.c.score, t.c.reasons
            )
            .where(and_(t.c.ts >= now - hours * 3600, t.c.started_at.is_not(None)))
            .order_by(t.c.ts.desc())
            .limit(20_000)
        ).all()
        episodes: dict[tuple[str, float], dict[str, Any]] = {}
        for r in rows:
            key = (r.series, float(r.started_at))
            ep = episodes.get(key)
            if ep is None:
                if len(episodes) >= 100:
                    continue
                ep = episodes[key] = {
                    "series": r.series,
                    "metric": r.metric,
                    "labels": dict(r.labels),
                    "started_at": float(r.started_at),
                    "last_seen": r.ts,
                    "score": r.score,
                    "reasons": set(),
                    "verdicts": [],
                }
            ep["score"] = (
                max(x for x in (ep["score"], r.score) if x is not None)
                if (ep["score"] is not None or r.score is not None)
                else None
            )
            ep["reasons"].update(x.get("reason") for x in r.reasons or [] if x.get("reason"))
        series = sorted({k[0] for k in episodes})
        given = conn.execute(
            select(fb.c.series, fb.c.started_at, fb.c.actor, fb.c.verdict, fb.c.note).where(
                fb.c.series.in_(series)
            )
        ).all()
    for g in given:
        ep = episodes.get((g.series, float(g.started_at)))
        if ep is not None:
            ep["verdicts"].append({"actor": g.actor, "verdict": g.verdict, "note": g.note})
    out = []
    for ep in episodes.values():
        ep["reasons"] = sorted(ep["reasons"])
        if secret and person:
            for verdict in ("false_alarm", "incident"):
                ep[f"{verdict}_url"] = feedback_link(
                    secret, ep["metric"], ep["labels"], ep["started_at"], person, verdict, now
                )
        out.append(ep)
    return out


@router.get(
    "/console/anomalies",
    responses=ok(AnomaliesOut, 401, 503),
    dependencies=[Depends(auth.reader("/console/anomalies"))],
)
async def anomalies(
    request: Request,
    by: str | None = Query(None, min_length=1, max_length=200, description="who will click"),
    hours: float = Query(24.0, gt=0, le=24 * 30),
) -> Response:
    settings = request.app.state.settings
    secret = settings.approval_secret.get_secret_value() if settings.approval_secret else None
    try:
        rows = await asyncio.to_thread(
            recent_anomalies, request.app.state.engine, secret, by, time.time(), hours
        )
    except SQLAlchemyError:
        return JSONResponse({"error": "database unavailable"}, status_code=503)
    body: dict[str, Any] = {"anomalies": rows, "count": len(rows)}
    if not secret:
        body["note"] = "RUNBOOK_APPROVAL_SECRET is not set: no feedback links"
    elif not by:
        body["note"] = "name yourself (by=...) for feedback links"
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


NO_STORE = {"Cache-Control": "no-store"}


#: what ``?anomaly=`` may hold (an alert's feedback link: metric, namespace, app)
ANOMALY_FILTER = r"^[A-Za-z0-9_.:\- ]{1,300}$"


def _home(anomaly: str | None) -> str:
    """``/console``, keeping an alert's anomaly filter across the sign-in."""
    return "/console" + (f"?{urlencode({'anomaly': anomaly})}" if anomaly else "")


def _login(why: str, anomaly: str | None = None) -> HTMLResponse:
    page = LOGIN.replace("{why}", html.escape(why)).replace(
        "{anomaly}", html.escape(anomaly or "", quote=True)
    )
    return HTMLResponse(
        page, status_code=401, headers={**NO_STORE, "WWW-Authenticate": 'Bearer realm="aiops read"'}
    )


async def _signed_in(request: Request, token: str, anomaly: str | None = None) -> Response:
    """The token given to the page: a cookie and a redirect to the bare ``/console``
    (the token leaves the address bar; an alert's ``anomaly`` filter stays), or the form
    again with a 401."""
    reads = request.app.state.reads
    if reads.open:  # RUNBOOK_READ_OPEN: nothing to sign in to
        return RedirectResponse(_home(anomaly), status_code=303, headers=NO_STORE)
    if not reads.token_ok(token):
        why = "wrong read token" if reads.configured else reads.refusal(request) or ""
        request.app.state.metrics.requests.labels("console", "401").inc()
        await request.app.state.refusals.refuse(request, "/console", why)
        return _login(why, anomaly)
    r = RedirectResponse(_home(anomaly), status_code=303, headers=NO_STORE)
    r.set_cookie(**reads.cookie_for(token))
    return r


@router.get(
    "/console",
    response_class=HTMLResponse,
    responses={401: {"description": "the sign-in form: the read token is needed"}},
)
async def console(
    request: Request,
    token: str | None = Query(None, min_length=1, max_length=4096),
    anomaly: str | None = Query(
        None,
        pattern=ANOMALY_FILTER,
        description="show the recent anomalies whose series holds these words (the"
        " alerts' feedback link)",
    ),
) -> Response:
    if token is not None:
        return await _signed_in(request, token, anomaly)
    why = await read_denied(request, "/console")
    if why is not None:
        return _login(why, anomaly)
    return HTMLResponse(PAGE, headers=NO_STORE)


@router.post(
    "/console",
    response_class=HTMLResponse,
    responses={
        303: {"description": "signed in: the cookie is set, on to /console"},
        401: {"description": "wrong token: the sign-in form again"},
    },
)
async def console_sign_in(request: Request) -> Response:
    """The sign-in form's post (``token=...``, form-encoded): the token stays out of URLs."""
    body = await request.body()
    form = parse_qs(body.decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    anomaly = (form.get("anomaly") or [""])[0]
    keep = anomaly if re.match(ANOMALY_FILTER, anomaly) else None
    return await _signed_in(request, token, keep)


LOGIN = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>aiops runbooks console: sign in</title>
<style>body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  #why { color: #a40; }</style>
</head>
<body>
<h1>aiops runbooks console</h1>
<p id="why">{why}</p>
<form method="post" action="/console">
  <input type="hidden" name="anomaly" value="{anomaly}">
  <label>Read token <input type="password" name="token" autocomplete="current-password"
    required></label>
  <button type="submit">Open the console</button>
</form>
</body>
</html>
"""


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>aiops runbooks console</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #ddd;
           vertical-align: top; }
  td.details { font-family: monospace; font-size: 12px; color: #555; word-break: break-all; }
  #stream-state { font-size: 12px; padding: 2px 6px; border-radius: 3px; background: #eee; }
  #stream-state.open { background: #cfc; } #stream-state.closed { background: #fcc; }
  #message { color: #a40; } .empty { color: #888; }
  tr.k-executed td.kind, tr.k-approved td.kind { color: #080; }
  tr.k-failed td.kind, tr.k-unauthorized td.kind, tr.k-escalated td.kind { color: #c00; }
  tr.k-approval_pending td.kind { color: #b60; }
  #blast { background: #fdd; border: 1px solid #c00; padding: 6px 10px; font-weight: bold; }
</style>
</head>
<body>
<h1>aiops runbooks console <span id="stream-state">connecting</span></h1>

<p id="blast" hidden></p>

<section id="incidents">
  <h2>Open incidents</h2>
  <table>
    <thead><tr><th>Opened</th><th>Incident</th><th>Probable cause</th><th>Members</th>
      <th>Action chain</th><th>Actions</th></tr></thead>
    <tbody id="incident-list"></tbody>
  </table>
</section>

<section id="anomalies">
  <h2>Recent anomalies <button id="refresh-anomalies" type="button">Refresh</button></h2>
  <p><label>Your name <input id="person" placeholder="who gives feedback"></label>
    <label>series <input id="anomaly-filter" placeholder="metric, namespace, app..."></label>
    <span id="feedback-message"></span></p>
  <table>
    <thead><tr><th>Began</th><th>Series</th><th>Reasons</th><th>Score</th>
      <th>Verdicts</th><th>Note</th><th></th></tr></thead>
    <tbody id="anomaly-list"></tbody>
  </table>
</section>

<section id="pending">
  <h2>Pending approvals <button id="refresh" type="button">Refresh</button></h2>
  <p id="message"></p>
  <table>
    <thead><tr><th>Action</th><th>Target</th><th>Signal</th><th>Reasons</th>
      <th>Expires</th><th></th></tr></thead>
    <tbody id="pending-list"></tbody>
  </table>
</section>

<section id="live">
  <h2>Live audit</h2>
  <label>kind <input id="filter-kind" placeholder="e.g. executed"></label>
  <label>text <input id="filter-text" placeholder="app, metric, details..."></label>
  <table>
    <thead><tr><th>Time</th><th>Kind</th><th>Incident</th><th>Signal</th><th>Namespace</th>
      <th>App</th><th>Action</th><th>Result</th><th>Details</th></tr></thead>
    <tbody id="events"></tbody>
  </table>
</section>

<script>
"use strict";
const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function time(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
}

function matches(tr) {
  const kind = $("filter-kind").value.trim().toLowerCase();
  const text = $("filter-text").value.trim().toLowerCase();
  return (!kind || tr.dataset.kind.toLowerCase().includes(kind)) &&
         (!text || tr.dataset.text.includes(text));
}

function applyFilters() {
  for (const tr of $("events").rows) tr.hidden = !matches(tr);
}

function addRow(row) {
  const tr = document.createElement("tr");
  tr.className = "k-" + row.kind;
  tr.dataset.kind = row.kind || "";
  tr.dataset.text = JSON.stringify(row).toLowerCase();
  cell(tr, time(row.ts));
  cell(tr, row.kind, "kind");
  cell(tr, row.incident_id);
  cell(tr, row.alertname || row.metric);
  cell(tr, row.namespace);
  cell(tr, row.app);
  cell(tr, row.action);
  cell(tr, row.result);
  cell(tr, row.details ? JSON.stringify(row.details) : "", "details");
  tr.hidden = !matches(tr);
  const list = $("events");
  list.insertBefore(tr, list.firstChild);
  while (list.rows.length > MAX_ROWS) list.deleteRow(-1);
}

async function decide(url, button) {
  button.disabled = true;
  try {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json();
    $("message").textContent = r.ok ? "Decision: " + body.decision : "Refused: " + body.error;
  } catch (err) {
    $("message").textContent = "Request failed: " + err;
  }
  loadPending();
}

function button(label, url, attr, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute(attr, id);
  b.addEventListener("click", () => decide(url, b));
  return b;
}

async function loadPending() {
  let body;
  try {
    const r = await fetch("/console/pending", { cache: "no-store" });
    if (r.status === 401) {
      $("message").textContent = "Signed out: open the console again with its read token.";
      return;
    }
    body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
  } catch (err) {
    $("message").textContent = "Cannot load pending approvals: " + err;
    return;
  }
  const list = $("pending-list");
  list.replaceChildren();
  for (const p of body.pending) {
    const tr = document.createElement("tr");
    tr.dataset.id = p.id;
    cell(tr, p.action);
    cell(tr, p.target);
    cell(tr, p.signal);
    cell(tr, (p.reasons || []).join(", "));
    cell(tr, time(p.expires_at));
    const td = cell(tr, "");
    if (p.approve_url) {
      td.appendChild(button("Approve", p.approve_url, "data-approve", p.id));
      td.appendChild(button("Reject", p.reject_url, "data-reject", p.id));
    } else {
      td.textContent = body.note || "no links";
    }
    list.appendChild(tr);
  }
  if (!body.pending.length) {
    const tr = document.createElement("tr");
    cell(tr, "Nothing waits for approval.", "empty").colSpan = 6;
    list.appendChild(tr);
  }
}

async function loadIncidents() {
  let body;
  try {
    const r = await fetch("/console/incidents", { cache: "no-store" });
    if (!r.ok) return;
    body = await r.json();
  } catch (err) {
    return;
  }
  const b = body.blast_radius;
  $("blast").hidden = !b.reached;
  $("blast").textContent = b.reached
    ? "Blast radius reached: " + b.actions + " actions across all apps in the last " +
      Math.round(b.window_seconds / 60) + " min (limit " + b.max +
      "); further actions are refused until the window passes."
    : "";
  const list = $("incident-list");
  list.replaceChildren();
  for (const i of body.incidents) {
    const tr = document.createElement("tr");
    tr.dataset.incident = i.id;
    cell(tr, time(i.opened_at));
    cell(tr, i.id);
    cell(tr, i.cause || i.subject);
    cell(tr, i.members || 1);
    cell(tr, i.chain || "none yet");
    cell(tr, i.actions + (i.escalated ? " (escalated)" : ""));
    list.appendChild(tr);
  }
  if (!body.incidents.length) {
    const tr = document.createElement("tr");
    cell(tr, "No open incident.", "empty").colSpan = 6;
    list.appendChild(tr);
  }
}

function person() {
  return $("person").value.trim();
}

async function giveFeedback(url, tr, button) {
  button.disabled = true;
  const note = tr.querySelector("input.note").value.trim();
  try {
    const r = await fetch(url + (note ? "&note=" + encodeURIComponent(note) : ""),
                          { cache: "no-store" });
    const body = await r.json();
    $("feedback-message").textContent = r.ok
      ? "Feedback " + body.feedback + ": " + body.verdict
      : "Refused: " + body.error;
  } catch (err) {
    $("feedback-message").textContent = "Request failed: " + err;
  }
  loadAnomalies();
}

function anomalyShown(tr) {
  const terms = $("anomaly-filter").value.trim().toLowerCase().split(" ").filter(Boolean);
  const series = (tr.dataset.series || "").toLowerCase();
  return terms.every((t) => series.includes(t));
}

function filterAnomalies() {
  for (const tr of $("anomaly-list").rows) {
    if (tr.dataset.series) tr.hidden = !anomalyShown(tr);
  }
}

async function loadAnomalies() {
  const who = person();
  let body;
  try {
    const q = who ? "?by=" + encodeURIComponent(who) : "";
    const r = await fetch("/console/anomalies" + q, { cache: "no-store" });
    if (!r.ok) return;
    body = await r.json();
  } catch (err) {
    return;
  }
  const list = $("anomaly-list");
  list.replaceChildren();
  for (const a of body.anomalies) {
    const tr = document.createElement("tr");
    tr.dataset.series = a.series;
    cell(tr, time(a.started_at));
    cell(tr, a.series);
    cell(tr, (a.reasons || []).join(", "));
    cell(tr, a.score == null ? "" : Number(a.score).toFixed(2));
    cell(tr, a.verdicts.map((v) => v.actor + ": " + v.verdict).join("; "));
    const noteCell = cell(tr, "");
    const note = document.createElement("input");
    note.className = "note";
    note.placeholder = "optional note";
    noteCell.appendChild(note);
    const td = cell(tr, "");
    for (const [verdict, label] of [["incident", "Real incident"],
                                    ["false_alarm", "Not an incident"]]) {
      const url = a[verdict + "_url"];
      if (!url) continue;
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.setAttribute("data-feedback", verdict);
      b.addEventListener("click", () => giveFeedback(url, tr, b));
      td.appendChild(b);
    }
    if (!td.children.length) td.textContent = body.note || "";
    tr.hidden = !anomalyShown(tr);
    list.appendChild(tr);
  }
  if (!body.anomalies.length) {
    const tr = document.createElement("tr");
    cell(tr, "No anomaly in the last 24 hours.", "empty").colSpan = 7;
    list.appendChild(tr);
  }
}

const APPROVAL_KINDS = new Set(["approval_pending", "approved", "rejected", "expired"]);
const INCIDENT_KINDS = new Set(["incident_opened", "incident_updated", "incident_joined",
  "resolved", "executed", "dry_run", "skipped_blast_radius", "skipped_incident"]);
const stream = new EventSource("/events");
stream.onopen = () => {
  $("stream-state").textContent = "live";
  $("stream-state").className = "open";
  loadPending();
};
stream.onerror = () => {
  $("stream-state").textContent = "reconnecting";
  $("stream-state").className = "closed";
};
stream.addEventListener("audit", (e) => {
  const row = JSON.parse(e.data);
  addRow(row);
  if (APPROVAL_KINDS.has(row.kind)) loadPending();
  if (INCIDENT_KINDS.has(row.kind)) loadIncidents();
});

$("filter-kind").addEventListener("input", applyFilters);
$("filter-text").addEventListener("input", applyFilters);
$("refresh").addEventListener("click", loadPending);
setInterval(loadPending, 30000);
setInterval(loadIncidents, 30000);
setInterval(loadAnomalies, 30000);
$("person").value = localStorage.getItem("aiops-person") || "";
$("person").addEventListener("change", () => {
  localStorage.setItem("aiops-person", person());
  loadAnomalies();
});
$("refresh-anomalies").addEventListener("click", loadAnomalies);
// an alert's feedback link (/console?anomaly=metric+namespace+app) opens on its anomaly
$("anomaly-filter").value = new URLSearchParams(location.search).get("anomaly") || "";
$("anomaly-filter").addEventListener("input", filterAnomalies);
loadPending();
loadIncidents();
loadAnomalies();
</script>
</body>
</html>
"""
