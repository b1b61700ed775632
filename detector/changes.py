"""Change events found in Prometheus: deploys and configuration changes of services.

Besides ``POST /changes`` on the webhook (CI/CD announcing a deploy), the catalogue
may name queries whose series are positive while a service changes, for example
with kube-state-metrics::

    changes:
      - name: deployments
        promql: changes(kube_deployment_status_observed_generation[5m]) > 0
        service: [namespace, deployment]   # the labels that name the service
        kind: deploy                       # deploy | config

Every cycle, ``ChangeWatcher.poll`` runs each query over the last few steps; a
series that turns positive is one change of its service (``namespace.deployment``
joined with dots, like the detector's ``group_by``), at the first positive point.
It is stored in the feature store (``aiops_changes``, id ``prom:<query>:<service>:
<time>``, so a replica or a restart records it once) and, from there, explains
incidents like an announced deploy (``detector.incidents``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiops.core.errors import ConfigError
from aiops.core.redact import short_error
from detector.catalogue import Query
from detector.incidents import Change

log = logging.getLogger("aiops.detector")

#: steps of history each poll reads (a change between two cycles is not missed)
POLL_STEPS = 5


class ChangeQuery(BaseModel):
    """One ``changes:`` entry of the ``AIOPS_CONFIG`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    promql: str = Field(min_length=1)
    service: tuple[str, ...] = ("namespace", "deployment")
    kind: Literal["deploy", "config"] = "deploy"

    def query(self) -> Query:
        return Query(name=self.name, promql=self.promql)

    def service_of(self, labels: Mapping[str, str]) -> str | None:
        values = [labels.get(name) for name in self.service]
        if not values or any(not v for v in values):
            return None
        return ".".join(str(v) for v in values)


def parse_change_queries(raw: Any, source: str = "AIOPS_CONFIG: changes") -> list[ChangeQuery]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: must be a list of queries (name, promql, service, kind)")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}[{i}]: must be a mapping with name and promql")
        try:
            out.append(ChangeQuery(**entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{source}[{i}]: {where}: {err['msg']}") from None
    names = [q.name for q in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: two queries share a name")
    return out


class ChangeWatcher:
    """Polls the change queries each cycle; records new changes in the store."""

    def __init__(self, queries: list[ChangeQuery], source: Any, store: Any = None) -> None:
        self.queries = queries
        self.source = source
        self.store = store
        #: (query, service) -> time of the positive run it is in (one change per run)
        self._active: dict[tuple[str, str], float] = {}

    def poll(self, now: float, step: float) -> list[Change]:
        """The changes that began since the last poll (recorded in the store)."""
        found: list[Change] = []
        for cq in self.queries:
            try:
                batch = self.source.fetch(
                    cq.query(), end=now, lookback=POLL_STEPS * step, step=step
                )
            except Exception as exc:  # Prometheus down: no change seen, detection goes on
                log.warning("change query=%s failed: %s", cq.name, short_error(exc))
                continue
            seen: set[tuple[str, str]] = set()
            for labels, row in zip(batch.labels, batch.values, strict=True):
                service = cq.service_of(labels)
                positive = [
                    batch.start + k * batch.step
                    for k, v in enumerate(row)
                    if math.isfinite(v) and v > 0
                ]
                if service is None or not positive:
                    continue
                key = (cq.name, service)
                seen.add(key)
                if key in self._active:
                    continue
                at = positive[0]
                self._active[key] = at
                change = Change(service, at, cq.kind, f"{cq.name}")
                found.append(change)
                self._record(cq, change)
            for key in [k for k in self._active if k[0] == cq.name and k not in seen]:
                del self._active[key]
        return found

    def _record(self, cq: ChangeQuery, change: Change) -> None:
        if self.store is None:
            return
        try:
            self.store.record_change(
                f"prom:{cq.name}:{change.service}:{change.at:.0f}",
                at=change.at,
                service=change.service,
                kind=change.kind,
                description=change.description,
                source="prometheus",
                received_at=change.at,
            )
        except Exception as exc:  # the database may be down: the change is still used
            log.warning("cannot record change %s: %s", change.service, short_error(exc))
