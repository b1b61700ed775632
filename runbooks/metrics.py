"""The webhook's metrics: counters the requests and actions update (``RunbookMetrics``),
and gauges read from the database at scrape time (``StateCollector``), which describes
itself as prometheus_client expects of a custom collector."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, select
from sqlalchemy.exc import SQLAlchemyError

from aiops.core.settings import Settings
from feature_store import tables
from runbooks import killswitch
from runbooks.state import incident_stats


class RunbookMetrics:
    def __init__(self, registry: CollectorRegistry, settings: Settings) -> None:
        self.dry_run = Gauge("runbooks_dry_run", "1 if actions are only audited", registry=registry)
        self.dry_run.set(1 if settings.autofix_dry_run else 0)
        self.actions = Counter(
            "runbooks_actions",
            "Actions run, by action and result",
            ["action", "result"],
            registry=registry,
        )
        self.events = Counter(
            "runbooks_events", "Audit rows written, by kind", ["kind"], registry=registry
        )
        self.audit_write = Histogram(
            "runbooks_audit_write_seconds",
            "Time to write one audit row",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=registry,
        )
        self.requests = Counter(
            "runbooks_requests",
            "Requests by route and status",
            ["route", "status"],
            registry=registry,
        )


ENABLED_HELP = (
    "1 if the kill switch allows actions: RUNBOOK_AUTOFIX_ENABLED, no '*' halt, database up"
)


class StateCollector(Collector):
    """Gauges read from the database at scrape time (shared by every replica)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        guard_store: Any = None,
        master: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.guard_store = guard_store
        self.master = master  # RUNBOOK_AUTOFIX_ENABLED as the remediator holds it now

    def cooldowns(self) -> dict[tuple[str, str], float]:
        try:
            return self.guard_store.cooldowns(
                self.engine, time.time(), self.settings.cooldown_seconds
            )
        except Exception:  # a state store outage shows in runbooks_database_up / healthz
            return {}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families ``collect`` yields, without values: the registry learns their
        names from this, not from a first scrape of the database when it is registered."""
        for name in STATE_FAMILIES:
            yield _family(name)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = _family("runbooks_database_up")
        try:
            stats = incident_stats(self.engine)
            now = time.time()
            with self.engine.connect() as conn:
                pending = conn.execute(
                    select(tables.approvals.c.id).where(
                        and_(
                            tables.approvals.c.state == "pending",
                            tables.approvals.c.expires_at > now,
                        )
                    )
                ).all()
                from runbooks.state import circuit_counts, fleet_count

                counts = circuit_counts(conn, now)
                fleet = fleet_count(conn, now, self.settings.action_window_seconds)
                halts = killswitch.halts(conn)
        except SQLAlchemyError:
            up.add_metric([], 0.0)
            yield up
            # no decision can be taken without the database: nothing runs
            yield _family("runbooks_enabled", 0.0)
            return
        up.add_metric([], 1.0)
        yield up
        everything = any(h.scope == killswitch.ALL for h in halts)
        yield _family("runbooks_enabled", float(self.master() and not everything))
        halted = _family("runbooks_halted")
        for h in halts:
            halted.add_metric([h.scope], h.halted_at)
        yield halted
        yield _family("runbooks_incidents_open", stats["open"])
        yield _family("runbooks_pending_approvals", float(len(pending)))
        ratio = stats["events"] / stats["incidents"] if stats["incidents"] else 0.0
        yield _family("runbooks_noise_reduction_ratio", ratio)
        healed = stats["self_healed"] / stats["resolved"] if stats["resolved"] else 0.0
        yield _family("runbooks_self_healed_ratio", healed)
        yield _family("runbooks_mean_time_to_resolve_seconds", stats["mttr"])
        cooling = _family("runbooks_cooldown_remaining_seconds")
        for (target, action), left in sorted(self.cooldowns().items()):
            cooling.add_metric([target, action], left)
        yield cooling
        circuit = _family("runbooks_circuit_open")
        for app, n in sorted(counts.items()):
            circuit.add_metric([app], 1.0 if n >= self.settings.circuit_max_hourly else 0.0)
        yield circuit
        yield _family("runbooks_blast_radius_actions", float(fleet))
        spent = fleet >= self.settings.max_actions_per_window
        yield _family("runbooks_blast_radius_open", 1.0 if spent else 0.0)


#: Every gauge ``StateCollector`` yields, in order: name -> (help, labels).
STATE_FAMILIES: dict[str, tuple[str, list[str] | None]] = {
    "runbooks_database_up": ("1 if the database answered this scrape", None),
    "runbooks_enabled": (ENABLED_HELP, None),
    "runbooks_halted": (
        "1 per scope halted by the runtime kill switch (value: since, Unix seconds)",
        ["scope"],
    ),
    "runbooks_incidents_open": ("Open incidents", None),
    "runbooks_pending_approvals": ("Actions waiting for a human", None),
    "runbooks_noise_reduction_ratio": ("Events per incident (deduplication and grouping)", None),
    "runbooks_self_healed_ratio": (
        "Share of resolved incidents resolved after a verified action",
        None,
    ),
    "runbooks_mean_time_to_resolve_seconds": ("Mean time from first event to resolve", None),
    "runbooks_cooldown_remaining_seconds": (
        "Seconds until the action may run again on the target",
        ["target", "action"],
    ),
    "runbooks_circuit_open": ("1 while the app's hourly action budget is spent", ["app"]),
    "runbooks_blast_radius_actions": (
        "Actions across every app within RUNBOOK_ACTION_WINDOW_SECONDS",
        None,
    ),
    "runbooks_blast_radius_open": (
        "1 while the fleet's action budget (RUNBOOK_MAX_ACTIONS_PER_WINDOW) is spent",
        None,
    ),
}


def _family(name: str, value: float | None = None) -> GaugeMetricFamily:
    """The gauge family ``name`` of ``STATE_FAMILIES``; with ``value``, its one sample."""
    help_text, labels = STATE_FAMILIES[name]
    return GaugeMetricFamily(name, help_text, value=value, labels=labels)


class FeedbackCollector(Collector):
    """``aiops_feedback_total{query,reason,verdict}``: the operators' verdicts in force
    (one per person and anomaly), per query, reason and verdict, read from
    ``aiops_feedback`` at scrape time. Precision in production, per query: incident /
    (incident + false_alarm). Nothing while the database is down (``runbooks_database_up``
    says so)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "aiops_feedback",
            "Operators' verdicts on anomalies (one per person and anomaly), by query,"
            " reason and verdict (false_alarm, incident)",
            labels=["query", "reason", "verdict"],
        )

    def collect(self) -> Iterator[CounterMetricFamily]:
        t = tables.feedback
        family = self._family()
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t.c.metric, t.c.verdict, t.c.reasons)).all()
        except SQLAlchemyError:
            yield family
            return
        counts: dict[tuple[str, str, str], int] = {}
        for metric, verdict, reasons in rows:
            for reason in sorted({r.get("reason") for r in reasons or [] if r.get("reason")}):
                key = (metric, reason, verdict)
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            family.add_metric(list(key), float(n))
        yield family
