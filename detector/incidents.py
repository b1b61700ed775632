"""One incident per cause: anomalies of related series grouped, with a probable cause.

When payments starts failing, checkout's success rate and latency, the error
budget and the business KPIs go anomalous within a minute or two. This module
turns such a storm into ONE incident and names its probable cause, in words.

- A series' **service** is the values of its query's ``group_by`` labels (default
  ``namespace`` and ``app``) joined with dots: ``shop.payments``.
- Two anomalies are **related** when their services are the same, or when one
  calls the other, directly or through others, in the catalogue's dependency map
  (``depends_on:`` in the ``AIOPS_CONFIG`` file, ``shop.checkout: [shop.payments]``).
  Services on two branches of the map (two services the frontend calls) are not
  related to each other.
- A new anomaly **joins** an open incident when a member it is related to is
  anomalous at its onset, or was within ``AIOPS_INCIDENT_WINDOW_SECONDS`` (default
  300) of it (an echo is often flagged minutes after the fault, once the longer
  windows see it); otherwise it opens an incident of its own. A fault travels up
  the map (the callers see the errors and the latency), demand travels down (a
  campaign's traffic loads what the frontend calls): a **demand** series' anomaly
  (the catalogue's ``demand: true``: traffic, sessions) can be the cause of another
  service's anomaly, never its echo, so it is not related to another service's
  anomaly that began before it (a campaign that starts while payments fails is an
  incident of its own). Its id is stable: it
  follows from the first member and its onset, so a replay or a restart that
  restores the onsets gives the same ids.
- An incident **ends** when its last member ends.
- The **probable cause** is the member whose service (1) was changed (deployed,
  reconfigured) at most ``change_window`` (15 minutes) before its onset, then (2)
  the most other members' services depend on (the service everything else calls),
  then (3) started first, then (4) is the strongest. The evidence says why, in
  words a person can check.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiops.core.errors import ConfigError
from aiops.core.series import label_key

#: the labels that name a series' service unless its query says otherwise
DEFAULT_GROUP_BY = ("namespace", "app")
#: members an incident's evidence names at most
EVIDENCE_MEMBERS = 5

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Dependencies:
    """The dependency map: service -> the services it calls (directly)."""

    calls_directly: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: transitive callees and callers per service, computed once each (the map is fixed)
    _down: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    _up: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: Any, source: str = "AIOPS_CONFIG: depends_on") -> Dependencies:
        """``{service: [service, ...]}`` (a single service may be a string); anything
        else is a ``ConfigError`` naming the entry."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: must be a mapping of service: [services it calls]")
        out: dict[str, frozenset[str]] = {}
        for caller, callees in raw.items():
            if not isinstance(caller, str) or not caller.strip():
                raise ConfigError(f"{source}: {caller!r} is not a service name")
            if isinstance(callees, str):
                callees = [callees]
            if not isinstance(callees, list) or not all(
                isinstance(c, str) and c.strip() for c in callees
            ):
                raise ConfigError(f"{source}: {caller}: must be a list of service names")
            if caller in callees:
                raise ConfigError(f"{source}: {caller} cannot depend on itself")
            out[caller.strip()] = frozenset(c.strip() for c in callees)
        return cls(out)

    def __hash__(self) -> int:
        return id(self)

    def callees(self, service: str) -> frozenset[str]:
        """Every service ``service`` calls, directly or through others."""
        known = self._down.get(service)
        if known is None:
            seen: set[str] = set()
            todo = [service]
            while todo:
                for nxt in self.calls_directly.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            known = self._down[service] = frozenset(seen - {service})
        return known

    def callers(self, service: str) -> frozenset[str]:
        """Every service that calls ``service``, directly or through others."""
        known = self._up.get(service)
        if known is None:
            known = frozenset(c for c in self.calls_directly if service in self.callees(c))
            self._up[service] = known
        return known

    def calls(self, caller: str | None, callee: str | None) -> bool:
        """Whether ``caller`` calls ``callee``, directly or through other services."""
        if caller is None or callee is None or caller == callee:
            return False
        return callee in self.callees(caller)

    def related_to(self, service: str) -> frozenset[str]:
        """The services related to ``service``: itself, its callers and its callees."""
        return self.callees(service) | self.callers(service) | {service}

    def related(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        return a == b or self.calls(a, b) or self.calls(b, a)

    def __len__(self) -> int:
        return len(self.calls_directly)


def service_of(labels: Mapping[str, str], group_by: Iterable[str] = DEFAULT_GROUP_BY) -> str | None:
    """``namespace.app`` (the ``group_by`` label values); None when one is missing."""
    values = [labels.get(name) for name in group_by]
    if not values or any(not v for v in values):
        return None
    return ".".join(str(v) for v in values)


@dataclass
class Member:
    """One anomalous series of an incident."""

    query: str
    labels: dict[str, str]
    onset: float
    reasons: tuple[str, ...] = ()
    score: float = 0.0
    service: str | None = None
    ended_at: float | None = None
    #: from a demand series (the catalogue's ``demand: true``: traffic, sessions)
    demand: bool = False

    @classmethod
    def of(
        cls,
        query: Any,
        labels: Mapping[str, str],
        onset: float,
        reasons: Iterable[str],
        score: float,
    ) -> Member:
        """The member for an anomalous series of ``query`` (a catalogue ``Query``): its
        service from the query's ``group_by``, demand from its ``demand``; the live cycle
        and the storm suite build their members here."""
        return cls(
            query.name,
            dict(labels),
            onset,
            tuple(reasons),
            score if math.isfinite(score) else 0.0,
            service_of(labels, query.group_by or DEFAULT_GROUP_BY),
            demand=bool(query.demand),
        )

    @property
    def key(self) -> SeriesKey:
        return (self.query, label_key(self.labels))

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else "anomaly"

    def name(self) -> str:
        """``shop.payments success_rate`` (the labels when the service is unknown)."""
        who = self.service or ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{who} {self.query}" if who else self.query

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.query,
            "labels": dict(self.labels),
            "service": self.service,
            "onset": self.onset,
            "reasons": list(self.reasons),
            "score": self.score,
            "ended_at": self.ended_at,
        }


@dataclass(frozen=True)
class Change:
    """A deploy or configuration change of a service (``POST /changes`` on the webhook,
    or a catalogue query over Prometheus)."""

    service: str
    at: float
    kind: str = "deploy"  # deploy | config
    description: str = ""

    def words(self) -> str:
        verb = "deployed" if self.kind == "deploy" else "reconfigured"
        what = f" ({self.description})" if self.description else ""
        return f"{self.service} was {verb}{what}"


@dataclass
class Incident:
    id: str
    opened_at: float
    members: dict[SeriesKey, Member] = field(default_factory=dict)
    closed_at: float | None = None
    cause: Member | None = None
    evidence: list[str] = field(default_factory=list)
    #: changes of its members' services shortly before their onsets
    changes: list[Change] = field(default_factory=list)
    #: its members by service (what a new anomaly is compared with)
    by_service: dict[str, list[Member]] = field(default_factory=dict, repr=False)
    #: per service: the first onset of a member that is not a demand one, and the last
    #: onset of a demand member (``_may_share_a_cause``)
    first_fault: dict[str, float] = field(default_factory=dict, repr=False)
    last_demand: dict[str, float] = field(default_factory=dict, repr=False)

    def add(self, member: Member) -> None:
        old = self.members.get(member.key)
        if old is not None and old.service is not None:
            self.by_service[old.service].remove(old)
        self.members[member.key] = member
        svc = member.service
        if svc is not None:
            self.by_service.setdefault(svc, []).append(member)
            if member.demand:
                self.last_demand[svc] = max(self.last_demand.get(svc, -math.inf), member.onset)
            else:
                self.first_fault[svc] = min(self.first_fault.get(svc, math.inf), member.onset)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def active(self) -> list[Member]:
        return [m for m in self.members.values() if m.ended_at is None]

    def services(self) -> set[str]:
        return {m.service for m in self.members.values() if m.service is not None}

    def as_dict(self) -> dict[str, Any]:
        """Members with the probable cause first."""
        cause = self.cause
        ordered = sorted(self.members.values(), key=lambda m: (m is not cause, m.onset))
        return {
            "id": self.id,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "probable_cause": cause.as_dict() if cause else None,
            "evidence": list(self.evidence),
            "changes": [
                {"service": c.service, "at": c.at, "kind": c.kind, "description": c.description}
                for c in self.changes
            ],
            "members": [m.as_dict() for m in ordered],
        }


@dataclass
class Changes:
    """What one ``observe`` did: incidents opened, changed (a member joined or ended,
    the cause moved) and closed."""

    opened: list[Incident] = field(default_factory=list)
    changed: list[Incident] = field(default_factory=list)
    closed: list[Incident] = field(default_factory=list)


def _may_share_a_cause(member: Member, inc: Incident, services: set[str]) -> bool:
    """False when a demand anomaly would join (or be joined by) another service's
    anomaly (not a demand one) that began before it: demand is a cause, never an echo."""
    others = services - {member.service}
    if member.demand:
        return all(member.onset <= inc.first_fault.get(s, math.inf) for s in others)
    return all(inc.last_demand.get(s, -math.inf) <= member.onset for s in others)


def incident_id(first: Member) -> str:
    """Stable: the first member's series and onset."""
    seed = f"{first.key!r}|{first.onset:.3f}".encode()
    return "inc-" + hashlib.sha256(seed).hexdigest()[:12]


class IncidentTracker:
    """Groups the anomalies of each cycle into incidents (see the module doc)."""

    def __init__(
        self,
        dependencies: Dependencies | None = None,
        window: float = 300.0,
        change_window: float = 900.0,
    ) -> None:
        self.dependencies = dependencies or Dependencies()
        self.window = window
        #: a change counts as evidence when it precedes a member's onset by at most this
        self.change_window = change_window
        self.incidents: dict[str, Incident] = {}  # the open ones
        self._recent: list[Change] = []  # the changes of the latest observe
        self._member_of: dict[SeriesKey, str] = {}
        #: service -> the open incidents holding a member of it
        self._incidents_of: dict[str, set[str]] = {}

    def observe(
        self, now: float, anomalous: Iterable[Member], changes: Iterable[Change] = ()
    ) -> Changes:
        """The series anomalous at ``now`` (each with its onset) and the recent changes
        of services (deploys): the incidents updated."""
        out = Changes()
        self._recent = [c for c in changes if now - c.at <= self.change_window + self.window]
        current = {m.key: m for m in anomalous}
        touched: set[str] = set()
        for iid, inc in self.incidents.items():
            for key, member in inc.members.items():
                if member.ended_at is None and key not in current:
                    member.ended_at = now
                    touched.add(iid)
        for member in sorted(current.values(), key=lambda m: (m.onset, m.key)):
            iid = self._member_of.get(member.key)
            if iid is not None and iid in self.incidents:
                known = self.incidents[iid].members[member.key]
                if member.onset != known.onset and known.ended_at is not None:
                    iid = None  # ended and started again: a new anomaly
                else:
                    known.reasons, known.score, known.ended_at = (
                        member.reasons,
                        member.score,
                        None,
                    )
                    continue
            inc = self._home(member)
            if inc is None:
                inc = Incident(incident_id(member), member.onset)
                self.incidents[inc.id] = inc
                out.opened.append(inc)
            inc.add(member)
            self._member_of[member.key] = inc.id
            if member.service is not None:
                self._incidents_of.setdefault(member.service, set()).add(inc.id)
            touched.add(inc.id)
        for iid in sorted(touched):
            inc = self.incidents[iid]
            if not inc.active():
                inc.closed_at = now
                del self.incidents[iid]
                for svc in inc.by_service:
                    holders = self._incidents_of.get(svc)
                    if holders is not None:
                        holders.discard(iid)
                        if not holders:
                            del self._incidents_of[svc]
                for key in inc.members:
                    if self._member_of.get(key) == iid:
                        del self._member_of[key]
                out.closed.append(inc)
                continue
            self._explain(inc)
            if all(inc is not o for o in out.opened):
                out.changed.append(inc)
        return out

    def _home(self, member: Member) -> Incident | None:
        """The open incident ``member`` joins: the oldest with a related member that is
        anomalous at ``member``'s onset, or was within the window of it."""
        if member.service is None:
            return None
        related = self.dependencies.related_to(member.service)
        candidates = set().union(*(self._incidents_of.get(svc, ()) for svc in related))
        best = None
        for inc in (self.incidents[iid] for iid in sorted(candidates)):
            if best is not None and inc.opened_at >= best.opened_at:
                continue
            services = related & inc.by_service.keys()
            if _may_share_a_cause(member, inc, services) and any(
                self._gap(member, m) <= self.window for svc in services for m in inc.by_service[svc]
            ):
                best = inc
        return best

    @staticmethod
    def _gap(new: Member, m: Member) -> float:
        """Seconds between ``new``'s onset and ``m``'s anomaly (0 while it lasts)."""
        end = m.ended_at if m.ended_at is not None else max(new.onset, m.onset)
        return max(0.0, m.onset - new.onset, new.onset - end)

    def _preceding(self, member: Member, inc: Incident) -> Change | None:
        """The latest change of ``member``'s service at most ``change_window`` before its
        onset (a deploy a little after the onset is no cause); the incident keeps the
        changes it found, however long it lasts."""
        before = [
            c
            for c in [*self._recent, *inc.changes]
            if c.service == member.service and 0 <= member.onset - c.at <= self.change_window
        ]
        return max(before, key=lambda c: c.at, default=None)

    def _explain(self, inc: Incident) -> None:
        members = list(inc.members.values())
        services = set(inc.by_service)
        # per service, not per member: the other member services that call it
        callers = {s: self.dependencies.callers(s) & services for s in services}
        empty: frozenset[str] = frozenset()
        deps = {m.key: callers[m.service] if m.service else empty for m in members}
        changed = {m.key: self._preceding(m, inc) for m in members}
        for c in changed.values():
            if c is not None and c not in inc.changes:
                inc.changes.append(c)
        cause = min(
            members,
            key=lambda m: (changed[m.key] is None, -len(deps[m.key]), m.onset, -m.score, m.key),
        )
        inc.cause = cause
        inc.evidence = self._evidence(cause, members, deps[cause.key])
        change = changed[cause.key]
        if change is not None:
            inc.evidence.insert(
                1, f"{change.words()} {cause.onset - change.at:.0f} s before its onset"
            )

    def _evidence(self, cause: Member, members: list[Member], dependents: set[str]) -> list[str]:
        lines = []
        others = sorted((m for m in members if m is not cause), key=lambda m: m.onset)
        first = f"{cause.name()} {cause.reason}"
        if not others:
            lines.append(f"{first} is the only anomaly")
        else:
            nxt = next((m for m in others if m.service != cause.service), others[0])
            lead = nxt.onset - cause.onset
            if lead > 0:
                lines.append(f"{first} started {lead:.0f} s before {nxt.name()}'s")
            elif lead == 0:
                lines.append(f"{first} started with {nxt.name()}")
            else:
                lines.append(f"{first} started {-lead:.0f} s after {nxt.name()}'s")
        if dependents:
            names = sorted(dependents)
            verb = "depends" if len(names) == 1 else "depend"
            lines.append(f"{', '.join(names)} {verb} on {cause.service}")
        if others:
            shown = [f"{m.name()} {m.reason}" for m in others[:EVIDENCE_MEMBERS]]
            more = len(others) - len(shown)
            tail = f" and {more} more" if more > 0 else ""
            lines.append(f"{len(members)} anomalies: {'; '.join(shown)}{tail}")
        return lines
