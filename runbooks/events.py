"""What the webhook receives: detector anomaly events and Alertmanager notifications.

Both are validated with pydantic (a bad request gets a 422 with the reason, never
a 500) and turned into ``Signal``s: one per anomaly event, one per alert of an
Alertmanager notification.

A NUL character (``\\u0000`` in the JSON) is valid JSON and SQLite stores it, but
PostgreSQL's text and JSONB columns refuse it. So that a delivery is decided, audited
and deduplicated the same way on both, every NUL of every string of the input (dict
keys, extra fields and nested objects included) is replaced, right after validation,
by the six characters of ``NUL_ESCAPE`` (``\\u0000`` written out): the audit shows where
the NULs were, the same delivery always gives the same text (its replay is still a
``duplicate``), and the length limits apply to the text as it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiops.core.series import series_key

NUL = "\x00"
#: what a NUL of an incoming string becomes: backslash, "u", "0000" (six characters)
NUL_ESCAPE = "\\u0000"


def visible_nul(value: Any) -> Any:
    """``value`` with every NUL of its strings (dict keys too, lists and tuples walked)
    written as ``NUL_ESCAPE``; ``value`` itself, unchanged, when it holds no NUL."""
    if isinstance(value, str):
        return value.replace(NUL, NUL_ESCAPE) if NUL in value else value
    if isinstance(value, dict):
        items = [(visible_nul(k), visible_nul(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        seq = [visible_nul(v) for v in value]
        if all(a is b for a, b in zip(seq, value, strict=True)):
            return value
        return type(value)(seq)
    return value


class _Incoming(BaseModel):
    """A validated input whose strings hold no NUL (see the module doc)."""

    @model_validator(mode="after")
    def _visible_nul(self) -> _Incoming:
        for name in type(self).model_fields:
            value = getattr(self, name)
            cleaned = visible_nul(value)
            if cleaned is not value:
                setattr(self, name, cleaned)
        if self.__pydantic_extra__:
            self.__pydantic_extra__ = visible_nul(self.__pydantic_extra__)
        return self


class ReasonIn(_Incoming):
    model_config = ConfigDict(extra="allow")

    reason: str = Field(min_length=1, max_length=64)
    window: str | None = None
    zscore: float | None = None
    delta: float | None = None
    threshold: float | None = None


#: members an incident event may list (the detector sends at most ``MAX_EVENT_MEMBERS``)
MAX_INCIDENT_MEMBERS = 1000


class MemberIn(_Incoming):
    """One anomalous series of a detector incident."""

    model_config = ConfigDict(extra="allow")

    metric: str = Field(min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    service: str | None = Field(None, max_length=253)
    onset: float | None = None
    reasons: list[str] = Field(default_factory=list)
    score: float | None = None


class IncidentIn(_Incoming):
    """The incident an anomaly event is about: the detector groups related anomalies
    (``detector.incidents``) and sends one event per incident, its probable cause first."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    #: 1 when it opens; one more each time a member joins or the probable cause moves
    revision: int = Field(1, ge=1)
    #: the probable cause's service (``namespace.app``), when its labels name one
    cause: str | None = Field(None, max_length=253)
    evidence: list[str] = Field(default_factory=list, max_length=20)
    members: list[MemberIn] = Field(default_factory=list, max_length=MAX_INCIDENT_MEMBERS)
    #: how many members it has (``members`` may list fewer)
    member_count: int | None = Field(None, ge=0)


class AnomalyEvent(_Incoming):
    """DESIGN 4.3: what the detector posts when an anomaly starts and when it ends.

    With ``incident`` (what the detector sends): one event per incident, whose
    ``metric`` and ``labels`` are its probable cause's; without (an older detector),
    one per series."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    metric: str = Field(min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    score: float | None = None
    reasons: list[ReasonIn] = Field(default_factory=list)
    value: float | None = None
    baseline: float | None = None
    started_at: float
    observed_at: float
    model_version: str = ""
    status: Literal["firing", "resolved"]
    incident: IncidentIn | None = None


#: a service name: ``namespace.app`` (the detector's group_by values joined with dots)
SERVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$"
_PART_FIRST = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,125}$"  # the namespace of labels
_PART = r"^[A-Za-z0-9_.:-]{1,126}$"  # the app of labels


class ChangeEvent(_Incoming):
    """A deploy or configuration change CI/CD announces (``POST /changes``): the
    detector names it as evidence, and as the probable cause, of an incident that
    begins shortly after it in that service."""

    model_config = ConfigDict(
        extra="forbid",
        # the OpenAPI says what the validator below wants: a service, or the labels
        json_schema_extra={
            "anyOf": [
                {"required": ["service"], "properties": {"service": {"type": "string"}}},
                {
                    "required": ["labels"],
                    "properties": {
                        "labels": {
                            "required": ["namespace", "app"],
                            "properties": {
                                "namespace": {"type": "string", "pattern": _PART_FIRST},
                                "app": {"type": "string", "pattern": _PART},
                            },
                        }
                    },
                },
            ]
        },
    )

    id: str = Field(min_length=1, max_length=200)
    service: str | None = Field(None, pattern=SERVICE_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    kind: Literal["deploy", "config"] = "deploy"
    description: str = Field("", max_length=500)
    at: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _a_service(self) -> ChangeEvent:
        if self.service is None:
            ns, app = self.labels.get("namespace"), self.labels.get("app")
            if not ns or not app:
                raise ValueError("name the service: service, or labels.namespace and labels.app")
            import re

            service = f"{ns}.{app}"
            if not re.match(SERVICE_PATTERN, service):
                raise ValueError(f"labels do not make a service name: {service!r}")
            self.service = service
        return self


class FeedbackIn(_Incoming):
    """An operator's verdict on one anomaly (``POST /feedback``): the series (its
    metric and labels) and the anomaly's onset (``started_at``, as the detector's
    events and ``aiops_anomalies`` give it)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: float = Field(ge=0)
    verdict: Literal["false_alarm", "incident"]
    note: str = Field("", max_length=1000)


class Alert(_Incoming):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    fingerprint: str = Field(min_length=1, max_length=200)
    generator_url: str | None = Field(None, alias="generatorURL")

    @field_validator("labels")
    @classmethod
    def _alertname(cls, v: dict[str, str]) -> dict[str, str]:
        if not v.get("alertname"):
            raise ValueError("every alert needs an alertname label")
        return v


class AlertmanagerPayload(_Incoming):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version: Literal["4"]
    receiver: str = ""
    status: Literal["firing", "resolved"]
    alerts: list[Alert] = Field(min_length=1)
    group_key: str = Field("", alias="groupKey")
    external_url: str = Field("", alias="externalURL")


@dataclass
class Signal:
    """One thing that may need fixing (or that just recovered)."""

    source: Literal["anomalies", "alertmanager"]
    dedup_key: str
    subject: str  # what an incident is about: series key or alertname{labels}
    status: str  # firing | resolved
    alertname: str | None
    metric: str | None
    reasons: list[str]
    namespace: str | None
    app: str | None
    labels: dict[str, str]
    at: float
    details: dict[str, Any] = field(default_factory=dict)
    #: the detector's incident: its revision and members (None: one series or one alert)
    incident: IncidentIn | None = None
    #: this signal opened the webhook's incident for a detector incident (set by the
    #: engine; the incident notice to Slack goes out after the commit)
    opened: bool = False

    @property
    def service(self) -> str | None:
        """``namespace.app`` of what the signal is about (None without both)."""
        if self.namespace and self.app:
            return f"{self.namespace}.{self.app}"
        return None

    @property
    def cause(self) -> str | None:
        """The probable cause's service: the detector incident's, else the signal's own."""
        if self.incident is not None and self.incident.cause:
            return self.incident.cause
        return self.service

    @property
    def name(self) -> str:
        return self.alertname or self.metric or ""

    @property
    def names(self) -> list[str]:
        """What a policy rule may match: the alert name and the detector metric."""
        return [n for n in (self.alertname, self.metric) if n]


def incident_subject(incident_id: str) -> str:
    """What a detector incident's webhook incident is about."""
    return f"incident:{incident_id}"


def from_anomaly(event: AnomalyEvent) -> Signal:
    inc = event.incident
    dedup_key = f"anomaly:{event.id}:{event.status}"
    subject = series_key(event.metric, event.labels)
    extra: dict[str, Any] = {}
    if inc is not None:  # one event per incident, one more per revision
        dedup_key += f":{inc.revision}"
        subject = incident_subject(inc.id)
        extra = {
            "incident": inc.id,
            "revision": inc.revision,
            "cause": inc.cause,
            "evidence": list(inc.evidence),
            "members": inc.member_count if inc.member_count is not None else len(inc.members),
        }
    return Signal(
        source="anomalies",
        dedup_key=dedup_key,
        subject=subject,
        status=event.status,
        alertname=None,
        metric=event.metric,
        reasons=[r.reason for r in event.reasons],
        namespace=event.labels.get("namespace"),
        app=event.labels.get("app"),
        labels=dict(event.labels),
        at=event.observed_at,
        details={
            "event_id": event.id,
            "score": event.score,
            "value": event.value,
            "baseline": event.baseline,
            "model_version": event.model_version,
            **extra,
        },
        incident=inc,
    )


def from_alerts(payload: AlertmanagerPayload) -> list[Signal]:
    """One signal per alert. A resolved alert whose series still has another alert firing
    in the same notification (AIOpsAnomalyDetected fires once per reason, and reasons end
    one by one) resolves only itself: the series' incident stays open until its last
    alert resolves (or the detector's own resolved event arrives)."""
    out = []
    firing = {
        _alert_subject(dict(a.labels), a.fingerprint)
        for a in payload.alerts
        if a.status == "firing"
    }
    for alert in payload.alerts:
        labels = dict(alert.labels)
        starts = alert.starts_at.timestamp()
        reason = labels.get("reason")
        ends = alert.ends_at.timestamp() if alert.ends_at and alert.status == "resolved" else None
        subject = _alert_subject(labels, alert.fingerprint)
        extra: dict[str, Any] = {}
        if alert.status == "resolved" and subject in firing:
            extra["incident_kept_open"] = f"another alert of {subject} is still firing"
            subject = f"{labels['alertname']}:{alert.fingerprint}"
        out.append(
            Signal(
                source="alertmanager",
                dedup_key=f"am:{alert.fingerprint}:{alert.starts_at.isoformat()}:{alert.status}",
                subject=subject,
                status=alert.status,
                alertname=labels["alertname"],
                metric=labels.get("metric"),
                reasons=[reason] if reason else [],
                # AIOpsIncident names the incident's probable cause: a rule acts on it
                namespace=labels.get("namespace") or labels.get("probable_cause_namespace"),
                app=labels.get("app") or labels.get("probable_cause_app"),
                labels=labels,
                at=ends or starts,
                details={
                    "fingerprint": alert.fingerprint,
                    "starts_at": starts,
                    "receiver": payload.receiver,
                    "summary": alert.annotations.get("summary"),
                    **extra,
                },
            )
        )
    return out


#: alert labels that say how an alert was made, not which series it is about
_META_LABELS = frozenset({"alertname", "severity", "reason", "metric", "job", "instance"})


def _alert_subject(labels: dict[str, str], fingerprint: str) -> str:
    """What an alert's incident is about. An alert naming a detector ``incident`` (as
    AIOpsIncident does) is about that incident, and one naming a detector ``metric``
    (as AIOpsAnomalyDetected does) about that series: their incident is the one the
    detector's own events open (one incident, whatever the path)."""
    if labels.get("incident"):  # AIOpsIncident: the detector incident's own incident
        return incident_subject(labels["incident"])
    metric = labels.get("metric")
    if metric:
        return series_key(metric, {k: v for k, v in labels.items() if k not in _META_LABELS})
    return f"{labels['alertname']}:{fingerprint}"
