"""The webhook's OpenAPI: response bodies, request bodies read raw, and authentication.

The routes answer with ``JSONResponse`` objects they build themselves (the error
paths must not depend on FastAPI's validation), so the answers are documented
here, per status, with the pydantic models below. ``POST /anomalies`` and
``POST /alertmanager`` read their body raw (the signature covers the bytes, and
it is checked before anything is parsed): their request bodies are documented
from the input models of ``runbooks.events`` by ``install_openapi``, which also
declares how each input authenticates.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from aiops.core.signing import SIGNATURE_HEADER, SLACK_SIGNATURE_HEADER, TIMESTAMP_HEADER
from runbooks.events import AlertmanagerPayload, AnomalyEvent, ChangeEvent, FeedbackIn


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong, for a person")


class DecisionOut(BaseModel):
    decision: str = Field(description="the last audit kind: executed, duplicate, dry_run, ...")
    incident_id: str | None
    action: str | None
    detail: str | None = None
    approval_id: str | None = None


class AlertsOut(BaseModel):
    alerts: list[DecisionOut] = Field(description="one decision per alert, in payload order")


class AuditRowOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    ts: float
    kind: str
    incident_id: str | None
    alertname: str | None
    metric: str | None
    namespace: str | None
    app: str | None
    action: str | None
    result: str | None
    actor: str | None
    details: dict[str, Any] | None


class AuditOut(BaseModel):
    rows: list[AuditRowOut]
    count: int


class HealthOut(BaseModel):
    status: str
    database: bool
    enabled: bool
    dry_run: bool
    rules: int
    verifications_pending: int
    guard_state: str
    halted: list[str] = Field(
        default_factory=list, description="scopes halted by the runtime kill switch"
    )
    redis: bool | None = None


class HaltOut(BaseModel):
    scope: str = Field(description="'*', '<namespace>.<app>', '<namespace>.*' or '*.<app>'")
    halted_at: float = Field(description="Unix seconds")
    actor: str
    reason: str


class KillSwitchOut(BaseModel):
    enabled: bool = Field(
        description="actions may run somewhere: RUNBOOK_AUTOFIX_ENABLED and no '*' halt"
    )
    autofix_enabled: bool = Field(description="RUNBOOK_AUTOFIX_ENABLED, the master switch")
    halts: list[HaltOut] = Field(description="the scopes halted now, oldest first")
    changed: bool | None = Field(
        None, description="POST only: whether this request changed anything"
    )


class KillSwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(description="false halts the scope, true resumes it")
    scope: str = Field(
        "*",
        min_length=1,
        max_length=512,
        description="'*' (default), '<namespace>.<app>', '<namespace>.*' or '*.<app>'",
    )
    reason: str = Field(
        min_length=1, max_length=1000, description="why, for the audit log and on-call"
    )


class ChangeOut(BaseModel):
    change: str = Field(description="the change's id")
    service: str
    recorded: bool = Field(description="false: this id was recorded before (a replay)")


class FeedbackOut(BaseModel):
    feedback: str = Field(description="recorded, or replaced (this person's earlier verdict)")
    series: str
    started_at: float
    verdict: str
    floors: list[dict[str, Any]] = Field(
        description="what the series' verdicts do now: per reason the floor under its"
        " threshold (statistic units), the threshold it raises, the factor, the cap"
    )


class AckOut(BaseModel):
    silence_id: str | None
    alertname: str
    minutes: int


class PendingOut(BaseModel):
    pending: list[dict[str, Any]]
    count: int
    note: str | None = None


class AnomaliesOut(BaseModel):
    anomalies: list[dict[str, Any]] = Field(
        description="recent anomalies, newest first: series, onset, reasons, score, the"
        " verdicts given, and signed false_alarm_url / incident_url for the person named"
    )
    count: int
    note: str | None = None


class IncidentsOut(BaseModel):
    incidents: list[dict[str, Any]] = Field(
        description="open incidents, newest first: cause, chain, members, actions"
    )
    count: int
    blast_radius: dict[str, Any] = Field(
        description="actions across all apps in the window, the budget, and whether it is spent"
    )


class SlackReplyOut(BaseModel):
    ok: bool
    replace_original: bool
    response_type: str
    text: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status answers an ``ErrorOut``."""
    return {status: {"model": ErrorOut} for status in statuses}


def ok(model: type[BaseModel], *more: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **errors(*more)}


#: OpenAPI security scheme names
DETECTOR_SCHEME = "detectorSignature"
ALERTMANAGER_SCHEME = "alertmanagerBearer"
SLACK_SCHEME = "slackSignature"
ADMIN_SCHEME = "adminBearer"
FEEDBACK_SCHEME = "feedbackBearer"
READ_SCHEME = "readBearer"
READ_COOKIE_SCHEME = "readCookie"
#: the read endpoints (runbooks.access)
READ_PATHS = (
    ("/audit", "get"),
    ("/events", "get"),
    ("/console", "get"),
    ("/console/pending", "get"),
    ("/console/incidents", "get"),
    ("/console/anomalies", "get"),
)


def _body(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


#: how each input authenticates, as the OpenAPI's security schemes
SECURITY_SCHEMES: dict[str, Any] = {
    DETECTOR_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": SIGNATURE_HEADER,
        "description": (
            f"sha256=<hex HMAC-SHA256 of '<{TIMESTAMP_HEADER}>.<raw body>'> keyed with"
            f" RUNBOOK_WEBHOOK_SECRET; {TIMESTAMP_HEADER} (Unix seconds) must be within"
            " 300 s of the webhook's clock"
        ),
    },
    ALERTMANAGER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "RUNBOOK_ALERTMANAGER_TOKEN (required only when it is set)",
    },
    ADMIN_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "RUNBOOK_ADMIN_TOKEN (POST /killswitch and GET /ack; unset:"
        " both answer 401)",
    },
    READ_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "RUNBOOK_READ_TOKEN, or RUNBOOK_ADMIN_TOKEN (the read endpoints;"
        " neither set and RUNBOOK_READ_OPEN not true: 401)",
    },
    READ_COOKIE_SCHEME: {
        "type": "apiKey",
        "in": "cookie",
        "name": "aiops_read",
        "description": "the console's cookie, set by GET /console?token=... or POST /console",
    },
    FEEDBACK_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "RUNBOOK_FEEDBACK_TOKEN (POST /feedback; the admin token works too)",
    },
    SLACK_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": SLACK_SIGNATURE_HEADER,
        "description": "Slack's v0 request signature (SLACK_SIGNING_SECRET)",
    },
}


def _form(field: str, description: str) -> dict[str, Any]:
    """A required form-encoded body of one required string field."""
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {field: {"type": "string", "description": description}},
                    "required": [field],
                }
            }
        },
    }


def install_openapi(app: FastAPI, *, alertmanager_token: bool, read_open: bool = False) -> None:
    """Document the raw request bodies and the authentication of the inputs."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        components["securitySchemes"] = dict(SECURITY_SCHEMES)
        paths = spec["paths"]
        anomalies = paths["/anomalies"]["post"]
        anomalies["requestBody"] = _body(AnomalyEvent, schemas)
        anomalies["security"] = [{DETECTOR_SCHEME: []}]
        announced = paths["/changes"]["post"]
        announced["requestBody"] = _body(ChangeEvent, schemas)
        announced["security"] = [{DETECTOR_SCHEME: []}]
        am = paths["/alertmanager"]["post"]
        am["requestBody"] = _body(AlertmanagerPayload, schemas)
        # Alert's validator wants an alertname label: say so in the schema too
        labels = schemas["Alert"]["properties"]["labels"]
        labels["properties"] = {"alertname": {"type": "string", "minLength": 1}}
        labels["required"] = ["alertname"]
        am["security"] = [{ALERTMANAGER_SCHEME: []}] if alertmanager_token else []
        slack = paths["/slack/interactive"]["post"]
        slack["requestBody"] = _form("payload", "Slack's block_actions payload (JSON)")
        slack["security"] = [{SLACK_SCHEME: []}]
        switch = paths["/killswitch"]["post"]
        switch["requestBody"] = _body(KillSwitchIn, schemas)
        switch["security"] = [{ADMIN_SCHEME: []}]
        paths["/ack"]["get"]["security"] = [{ADMIN_SCHEME: []}]
        given = paths["/feedback"]["post"]
        given["requestBody"] = _body(FeedbackIn, schemas)
        given["security"] = [{FEEDBACK_SCHEME: []}, {ADMIN_SCHEME: []}]
        for path, method in READ_PATHS:
            paths[path][method]["security"] = (
                [] if read_open else [{READ_SCHEME: []}, {READ_COOKIE_SCHEME: []}]
            )
        paths["/console"]["post"]["requestBody"] = _form("token", "the read token")
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
