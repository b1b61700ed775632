"""One detection cycle over the whole catalogue, and the detector's own state.

The ``Detector`` owns the Prometheus source, the model provider, the metrics
registry and what it remembers between cycles (onsets of anomalies, last good
cycle, last error per query). ``run_cycle`` never raises for a Prometheus
problem: errors are counted, logged and shown by ``health``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from aiops.core.errors import QueryError
from aiops.core.numbers import finite_or_none
from aiops.core.redact import redact
from aiops.core.settings import Settings
from detector.catalogue import Query, resolve_catalogue
from detector.changes import ChangeWatcher, parse_change_queries
from detector.explain import PASSIVE_REASONS
from detector.exporter import AnomalyCollector, DetectorMetrics, IncidentCollector
from detector.incidents import (
    Change,
    Dependencies,
    Incident,
    IncidentTracker,
    Member,
    SeriesKey,
)
from detector.pipeline import (
    detect_batch,
    feature_spec,
    trained_weekly,
    usable_cpus,
)
from detector.result import SeriesResult
from detector.scoring import BaselineModelProvider, ModelProvider
from detector.season import SeasonalHistory, fetch_failed
from detector.verdict import Thresholds

if TYPE_CHECKING:
    from feature_store.store import FeatureStore
from aiops.core.redact import short_error
from aiops.core.series import label_key, series_key
from detector.source import PrometheusSource, Selection, cap_series, keep_shard

log = logging.getLogger("aiops.detector")

#: Every kind of query error (the ``kind`` label of aiops_detector_query_errors_total).
QUERY_ERROR_KINDS = ("unreachable", "timeout", "bad_query", "server_error", "bad_response")
#: Phases of a cycle (the ``phase`` label of aiops_detector_phase_seconds).
PHASES = ("fetch", "features", "scoring", "explanation", "export", "store")


@dataclass
class QueryState:
    ok: bool = False
    last_ok: float | None = None
    error: str | None = None
    error_kind: str | None = None
    series: int = 0
    warming_up: int = 0
    anomalies: int = 0


@dataclass
class CycleReport:
    started: float
    duration: float
    results: dict[str, list[SeriesResult]] = field(default_factory=dict)
    errors: dict[str, QueryError] = field(default_factory=dict)
    #: wall time per phase: fetch (range queries, seasonal history), features, scoring,
    #: explanation, export (the anomaly gauges), store (feature store and anomalies)
    phases: dict[str, float] = field(default_factory=dict)
    #: the open incidents after the cycle (``detector.incidents``)
    incidents: list[Incident] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if not self.errors:
            return "ok"
        return "failed" if not self.results else "partial"

    def all_results(self) -> list[SeriesResult]:
        return [r for rs in self.results.values() for r in rs]


class Detector:
    """Runs detection cycles and exports their results."""

    def __init__(
        self,
        settings: Settings,
        *,
        queries: list[Query] | None = None,
        source: PrometheusSource | None = None,
        provider: ModelProvider | None = None,
        registry: CollectorRegistry | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        self.settings = settings
        self.queries = queries if queries is not None else resolve_catalogue(settings)
        self.source = source or PrometheusSource.from_settings(settings)
        self.seasons = SeasonalHistory(self.source)
        self.provider = provider or BaselineModelProvider(
            refit_seconds=settings.model_refit_seconds
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = AnomalyCollector(self.registry)
        #: anomalies of related series grouped into incidents, with a probable cause
        self.incidents = IncidentTracker(
            Dependencies.parse(settings.depends_on), settings.incident_window_seconds
        )
        self.incident_collector = IncidentCollector(self.registry)
        change_queries = parse_change_queries(settings.change_queries)
        self.changes = ChangeWatcher(change_queries, self.source, store) if change_queries else None
        self._polled: list[Change] = []  # changes the watcher found (used without a store)
        self._queries = {q.name: q for q in self.queries}
        self.metrics = DetectorMetrics(self.registry)
        self.store = store
        #: operators' verdicts in force (detector.feedback), read every cycle
        self.feedback: Any = None
        self.engine: Any = None  # set by build_detector
        self._pruned_at = 0.0
        self.database_up: bool | None = None
        self.thresholds = Thresholds.from_settings(settings)
        self.threads = settings.detect_threads or min(4, usable_cpus())
        self.state = {q.name: QueryState() for q in self.queries}
        for q in self.queries:  # every error series exists from the start, at 0
            for kind in QUERY_ERROR_KINDS:
                self.metrics.query_errors.labels(q.name, kind)
            self.metrics.series_dropped.labels(q.name)
        #: label keys each query exported at its last cycle (kept first under the cap)
        self._exported: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        self.prometheus_up: bool | None = None
        self.last_success: float | None = None
        self.last_cycle: float | None = None
        self.cycles = 0
        self._onsets: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: open anomalies whose ``firing`` event was sent (see ``_track_onsets``)
        self._sent: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], SeriesResult] = {}
        #: firing events of incidents open before a restart (from the webhook outbox):
        #: event id -> (the event, its members' series keys)
        self._restored: dict[str, tuple[dict[str, Any], list[SeriesKey]]] = {}
        #: incidents whose firing event was sent: id -> (the event, its signature)
        self._posted: dict[str, tuple[dict[str, Any], Any]] = {}
        #: series dropped as stale: an incident they end is forgotten, not resolved
        self._gone: set[SeriesKey] = set()
        self.notifier: Any = None
        if settings.webhook_url:
            from detector.notify import Notifier, Outbox

            secret = settings.webhook_secret
            self.notifier = Notifier(
                settings.webhook_url,
                secret.get_secret_value() if secret else None,
                metrics=self.metrics,
                outbox=Outbox(store.engine) if store is not None else None,
            )
            self._restore_onsets(self.notifier.open_firing())
        self._lock = threading.Lock()

    def _restore_onsets(self, events: list[dict[str, Any]]) -> None:
        """The onsets of the members of incidents open when the detector stopped (an
        older detector's per-series event is one member): the incident found again keeps
        its event id, and the ``resolved`` event of one that ended meanwhile is sent."""
        names = {q.name for q in self.queries}
        for event in events:
            inc = event.get("incident")
            members = inc.get("members") if isinstance(inc, dict) else None
            if not isinstance(members, list):
                members = [{**event, "onset": event.get("started_at")}]
            keys = []
            for m in members:
                labels, onset = m.get("labels"), m.get("onset")
                if m.get("metric") not in names or not isinstance(labels, dict):
                    continue
                if m.get("ended_at") is not None or not isinstance(onset, int | float):
                    continue
                key = (m["metric"], label_key(labels))
                self._onsets.setdefault(key, float(onset))
                self._sent.add(key)
                keys.append(key)
            self._restored[event["id"]] = (event, keys)

    # -- start-up ---------------------------------------------------------------------------
    def check_queries(self) -> dict[str, str | None]:
        """Validate every query against Prometheus; log each invalid one by name."""
        out: dict[str, str | None] = {}
        for q in self.queries:
            try:
                self.source.check(q)
                out[q.name] = None
            except QueryError as exc:
                out[q.name] = f"{exc.kind}: {exc.message}"
                self.metrics.query_errors.labels(q.name, exc.kind).inc()
                if exc.kind == "bad_query":
                    log.error("invalid PromQL query=%s error=%s", q.name, exc.message)
                else:
                    log.warning(
                        "cannot check query=%s kind=%s error=%s", q.name, exc.kind, exc.message
                    )
        return out

    # -- the cycle --------------------------------------------------------------------------
    def run_cycle(self, now: float | None = None) -> CycleReport:
        """Fetch, score, explain and export every query once."""
        with self._lock:
            return self._run_cycle(time.time() if now is None else now)

    def _run_cycle(self, now: float) -> CycleReport:
        t0 = time.perf_counter()
        report = CycleReport(started=now, duration=0.0)
        # a cycle succeeds when at least one query's answer could be used: answers that
        # are all garbage (HTML, cut-short JSON), all refused or all missing are a failure
        used = False
        phases = report.phases
        for phase in PHASES:
            phases[phase] = 0.0
        self._refresh_models()
        self._refresh_feedback(now)
        for q in self.queries:
            st = self.state[q.name]
            step = q.step_seconds(self.settings)
            lookback = q.lookback_seconds(self.settings)
            t1 = time.perf_counter()
            known = self._exported.get(q.name, set())
            limit = self.settings.max_series_per_query
            try:
                if getattr(self.source, "selects", False):
                    # the source applies the cap while it reads the answer (bounded memory)
                    select = Selection(limit=limit, known=known, shard=self.settings.shard_index)
                    batch = self.source.fetch(
                        q, end=now, lookback=lookback, step=step, select=select
                    )
                else:
                    batch = self.source.fetch(q, end=now, lookback=lookback, step=step)
            except QueryError as exc:
                self._query_failed(q, st, exc, now)
                report.errors[q.name] = exc
                continue
            finally:
                took = time.perf_counter() - t1
                phases["fetch"] += took
                self.metrics.query_seconds.labels(q.name).set(took)
            used = True
            dropped_early = batch.dropped
            batch = keep_shard(batch, self.settings.shard_index)
            batch, dropped = cap_series(batch, limit, known)
            dropped += dropped_early
            if dropped:
                self.metrics.series_dropped.labels(q.name).inc(dropped)
                log.warning(
                    "query=%s returned %d series over AIOPS_MAX_SERIES_PER_QUERY=%d: dropped",
                    q.name,
                    dropped,
                    self.settings.max_series_per_query,
                )
            for warning in batch.warnings:
                log.warning("query=%s %s", q.name, warning)
            t1 = time.perf_counter()
            spec, weekly = None, None
            try:
                weekly = trained_weekly(self.provider, q, batch)
                spec = feature_spec(q, self.settings, batch.step, weekly=weekly is not None)
                past = self.seasons.slices(q, batch, spec)
            except QueryError as exc:
                past = None
                fetch_failed(q, exc)
                self.metrics.query_errors.labels(q.name, exc.kind).inc()
            phases["fetch"] += time.perf_counter() - t1
            # an anomaly an operator called "not an incident" is not held by hysteresis:
            # it ends unless its reasons still pass the (raised) strict thresholds
            dismissed = self.feedback.dismissed if self.feedback is not None else set()
            active = {
                key
                for (name, key), onset in self._onsets.items()
                if name == q.name and (series_key(name, dict(key)), onset) not in dismissed
            }
            results = detect_batch(
                batch,
                q,
                self.settings,
                self.provider,
                now=now,
                thresholds=self.thresholds,
                active=active,
                past=past,
                timings=phases,
                threads=self.threads,
                weekly=weekly if past is not None else None,
                # the spec is computed once per query, unless the weekly profile it
                # was made for is dropped with the slices it failed to fetch
                spec=spec if past is not None or weekly is None else None,
                feedback=self.feedback,
            )
            t2 = time.perf_counter()
            self._track_onsets(q.name, results)
            self._exported[q.name] = {label_key(r.labels) for r in results}
            self.collector.update(q.name, results)
            report.results[q.name] = results
            self._query_ok(q, st, results, now)
            t3 = time.perf_counter()
            phases["export"] += t3 - t2
            self._store(q.name, results)
            phases["store"] += time.perf_counter() - t3
        self._group_incidents(now, report)
        self.prometheus_up = used
        self.metrics.prometheus_up.set(1 if used else 0)
        if used:
            self.last_success = now
            self.metrics.last_success.set(now)
        report.duration = time.perf_counter() - t0
        self.metrics.cycle_seconds.observe(report.duration)
        self.metrics.cycles.labels(report.outcome).inc()
        for phase, seconds in phases.items():
            self.metrics.phase_seconds.labels(phase).set(seconds)
        self.last_cycle = now
        self.cycles += 1
        log.info(
            "cycle outcome=%s seconds=%.3f series=%d anomalies=%d errors=%d",
            report.outcome,
            report.duration,
            sum(len(r) for r in report.results.values()),
            sum(r.anomalous for r in report.all_results()),
            len(report.errors),
        )
        return report

    # -- incidents ------------------------------------------------------------------------
    def _recent_changes(self, now: float) -> list[Change]:
        """Deploys and configuration changes recent enough to explain an incident: the
        catalogue's change queries over Prometheus (``detector.changes``), and what the
        feature store holds (``POST /changes`` on the webhook; none while it is down)."""
        since = now - self.incidents.change_window - self.incidents.window
        if self.changes is not None:
            step = min(q.step_seconds(self.settings) for q in self.queries)
            self._polled = [c for c in self._polled if c.at >= since]
            self._polled += self.changes.poll(now, step)
        out = {(c.service, c.at): c for c in self._polled}
        if self.store is not None and hasattr(self.store, "changes"):
            try:
                rows = self.store.changes(since=since)
            except Exception as exc:  # the database may be down: grouping goes on
                log.warning("cannot read change events: %s", short_error(exc))
                rows = []
            for r in rows:
                out.setdefault(
                    (r["service"], r["at"]),
                    Change(r["service"], r["at"], r["kind"], r["description"]),
                )
        return list(out.values())

    def _group_incidents(self, now: float, report: CycleReport) -> None:
        """Every series anomalous now into the incidents (``detector.incidents``)."""
        members = []
        for key, onset in self._onsets.items():
            last = self._last.get(key)
            if last is None:  # restored after a restart and not scored anomalous yet
                continue
            members.append(
                Member.of(
                    self._queries[key[0]],
                    last.labels,
                    onset,
                    (r.reason for r in last.reasons),
                    last.score,
                )
            )
        changes = self.incidents.observe(now, members, self._recent_changes(now))
        for inc in changes.opened:
            log.warning(
                "incident opened id=%s probable_cause=%s evidence=%s",
                inc.id,
                inc.cause.name() if inc.cause else "-",
                " / ".join(inc.evidence),
            )
        for inc in changes.changed:
            log.info(
                "incident updated id=%s members=%d probable_cause=%s",
                inc.id,
                len(inc.members),
                inc.cause.name() if inc.cause else "-",
            )
        for inc in changes.closed:
            log.info("incident closed id=%s members=%d", inc.id, len(inc.members))
        report.incidents = list(self.incidents.incidents.values())
        self.incident_collector.update(report.incidents)
        if self.notifier is not None:
            self._post_incidents(changes.closed, now)

    @staticmethod
    def _signature(cause: SeriesKey | None, members: Any) -> tuple[Any, frozenset[SeriesKey]]:
        """What a revision changes: the probable cause and the members."""
        return cause, frozenset(members)

    def _post_incidents(self, closed: list[Incident], at: float) -> None:
        """One event per incident to the webhook (``detector.notify``): ``firing`` once
        it is ``AIOPS_INCIDENT_SETTLE_SECONDS`` old (the storm's other members have
        joined, its probable cause is known) and a member holds a reason other than a
        spike (a spike is shown, not acted on); again as its next revision when a
        member joined or the probable cause moved; ``resolved`` when it closed."""
        from detector.notify import incident_event, resolved_event

        now, settle = time.time(), self.settings.incident_settle_seconds

        for inc in closed:
            posted = self._posted.pop(inc.id, None)
            if posted is None:
                continue
            if any(k in self._gone for k in inc.members):  # went stale: no one knows
                self.notifier.forget([posted[0]])
            else:
                self.notifier.send(resolved_event(posted[0], now))
        self._gone -= {k for inc in closed for k in inc.members}
        open_now = self.incidents.incidents
        for eid, (event, keys) in list(self._restored.items()):
            if eid in open_now:  # the same incident, found again after the restart
                cause = (event.get("metric"), label_key(event.get("labels") or {}))
                self._posted[eid] = (event, self._signature(cause, keys))
                del self._restored[eid]
            elif not any(k in self._onsets for k in keys):  # ended while away
                self.notifier.send(resolved_event(event, now))
                del self._restored[eid]
        for inc in open_now.values():
            if inc.cause is None:
                continue
            signature = self._signature(inc.cause.key, inc.members)
            posted = self._posted.get(inc.id)
            if posted is None and (
                at - inc.opened_at < settle or not any(k in self._sent for k in inc.members)
            ):
                continue  # settling, or spikes only so far
            if posted is not None and posted[1] == signature:
                continue
            revision = 1 if posted is None else posted[0]["incident"]["revision"] + 1
            event = incident_event(inc, self._last.get(inc.cause.key), revision, now)
            self._posted[inc.id] = (event, signature)
            self.notifier.send(event)

    # -- the database -------------------------------------------------------------------
    def _refresh_models(self) -> None:
        refresh = getattr(self.provider, "refresh", None)
        if refresh is None:
            return
        refresh()
        up = self.provider.state.up  # type: ignore[attr-defined]
        self._database(up)
        for q in self.queries:
            groups = self.provider.trained(q.name)  # type: ignore[attr-defined]
            self.metrics.trained_models.labels(q.name).set(sum(len(g.index) for g in groups))

    #: verdicts older than this are not read (their floors have long decayed)
    FEEDBACK_DAYS = 365

    def _refresh_feedback(self, now: float) -> None:
        """Operators' verdicts from the feature store (``detector.feedback``); while the
        database is down the last ones read stay in force."""
        if self.store is None or not hasattr(self.store, "feedback"):
            return
        from detector.feedback import Feedback

        try:
            rows = self.store.feedback(since=now - self.FEEDBACK_DAYS * 86400, limit=100_000)
        except Exception as exc:  # the database may be down: detection goes on
            log.warning("cannot read feedback: %s", short_error(exc))
            return
        self.feedback = Feedback.from_rows(rows, self.settings)

    def _database(self, up: bool | None) -> None:
        if up is None:
            return
        self.database_up = up
        self.metrics.database_up.set(1 if up else 0)

    def _prune_features(self) -> None:
        """Drop feature rows older than AIOPS_FEATURE_RETENTION, at most once an hour."""
        now = time.time()
        if self.store is None or now - self._pruned_at < 3600:
            return
        self._pruned_at = now
        n = self.store.prune_features(now - self.settings.feature_retention_seconds)
        if n:
            log.info("feature rows pruned rows=%d", n)

    def _store(self, query: str, results: list[SeriesResult]) -> None:
        """Record anomalies (and the newest feature rows) of one query; never raises."""
        if self.store is None:
            return
        table = "aiops_anomalies"
        try:
            self.store.record_anomalies(results)
            self._prune_features()
            if self.settings.store_features:
                table = "aiops_features"
                self.store.write_rows(
                    [
                        {
                            "series": series_key(query, r.labels),
                            "ts": float(r.observed_at),
                            "metric": query,
                            "value": finite_or_none(r.value),
                            "baseline": finite_or_none(r.baseline),
                            "scale": finite_or_none(r.scale),
                            "features": {k: finite_or_none(v) for k, v in r.features.items()},
                        }
                        for r in results
                        if r.status == "ok"
                    ]
                )
        except Exception as exc:  # the database is down: detection goes on, the gap is counted
            self.metrics.store_errors.labels(table).inc()
            if self.database_up is not False:
                log.error(
                    "feature store write failed table=%s error=%s",
                    table,
                    short_error(exc),
                )
            self._database(False)
        else:
            if self.database_up is False:
                log.info("feature store reachable again")
            self._database(True)

    def _query_ok(self, q: Query, st: QueryState, results: list[SeriesResult], now: float) -> None:
        if not st.ok and st.error:
            log.info("query recovered query=%s", q.name)
        st.ok, st.last_ok, st.error, st.error_kind = True, now, None, None
        st.series = sum(r.status == "ok" for r in results)
        st.warming_up = sum(r.status == "warming_up" for r in results)
        st.anomalies = sum(r.anomalous for r in results)
        m = self.metrics
        m.query_up.labels(q.name).set(1)
        m.series_scored.labels(q.name).set(st.series)
        m.series_warming.labels(q.name).set(st.warming_up)
        m.anomalies.labels(q.name).set(st.anomalies)
        model = self.provider.current(q.name)
        if model is not None:
            m.set_model(q.name, model.version, now - model.fitted_at)

    def _query_failed(self, q: Query, st: QueryState, exc: QueryError, now: float) -> None:
        st.ok, st.error, st.error_kind = False, exc.message, exc.kind
        self.metrics.query_errors.labels(q.name, exc.kind).inc()
        self.metrics.query_up.labels(q.name).set(0)
        log.error("query failed query=%s kind=%s error=%s", q.name, exc.kind, exc.message)
        # Keep the last verdicts for a while; past the staleness limit, export nothing
        # rather than stale anomaly values.
        if st.last_ok is None or now - st.last_ok > self.settings.stale_after:
            if q.name in self.collector.queries():
                log.warning("dropping stale gauges query=%s", q.name)
            self.collector.drop(q.name)
            self.metrics.forget_query(q.name)
            self._gone |= {k for k in self._onsets if k[0] == q.name}
            self._onsets = {k: v for k, v in self._onsets.items() if k[0] != q.name}
            self._sent = {k for k in self._sent if k[0] != q.name}

    def _track_onsets(self, query: str, results: list[SeriesResult]) -> None:
        seen = set()
        for r in results:
            key = (query, label_key(r.labels))
            if r.anomalous:
                seen.add(key)
                self._last[key] = r
                if key not in self._onsets:
                    self._onsets[key] = r.observed_at
                    r.started_at = r.observed_at
                    log.warning(
                        "anomaly started metric=%s labels=%s score=%.3f reasons=%s",
                        query,
                        r.labels,
                        r.score,
                        ",".join(x.reason for x in r.reasons),
                    )
                r.started_at = self._onsets[key]
                # its incident is posted to the webhook once a reason other than a spike
                # holds a member (a spike is shown, not acted on)
                if any(x.reason not in PASSIVE_REASONS for x in r.reasons):
                    self._sent.add(key)
        for key in [k for k in self._onsets if k[0] == query and k not in seen]:
            log.info("anomaly ended metric=%s labels=%s", query, dict(key[1]))
            del self._onsets[key]
            self._last.pop(key, None)
            self._sent.discard(key)

    def _database_health(self) -> dict[str, Any] | None:
        if self.engine is None:
            return None
        trained = getattr(self.provider, "trained", None)
        failures = getattr(self.provider, "failures", None)
        return {
            "up": self.database_up,
            "trained_models": sum(
                len(g.index) for q in self.queries for g in (trained(q.name) if trained else [])
            ),
            "refused_models": len(failures()) if failures else 0,
        }

    # -- health -----------------------------------------------------------------------------
    def health(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """(healthy, body) for /healthz: unhealthy when the last good cycle is too old."""
        now = time.time() if now is None else now
        age = None if self.last_success is None else now - self.last_success
        healthy = age is not None and age <= self.settings.stale_after
        body = {
            "status": "ok" if healthy else ("starting" if self.cycles == 0 else "stale"),
            "prometheus": {"url": redact(self.settings.prom_url), "up": self.prometheus_up},
            "last_success_age_seconds": None if age is None else round(age, 3),
            "stale_after_seconds": self.settings.stale_after,
            "cycles": self.cycles,
            "database": self._database_health(),
            "queries": {
                name: {
                    "up": st.ok,
                    "series": st.series,
                    "warming_up": st.warming_up,
                    "anomalies": st.anomalies,
                    "error": None if st.error is None else f"{st.error_kind}: {st.error}",
                }
                for name, st in self.state.items()
            },
        }
        return healthy, body


def build_detector(settings: Settings, **kwargs: Any) -> Detector:
    """The detector with its database: the feature store, and models from the registry.

    The schema is migrated first (``AIOPS_AUTO_MIGRATE``, default on; off, it must be
    current). A database that cannot be reached at start is logged; the detector
    then runs on baseline models and keeps trying the registry every cycle.
    """
    from detector.models import RegistryModelProvider
    from feature_store.registry import ModelRegistry
    from feature_store.store import FeatureStore
    from sql.migrate import open_database

    engine = open_database(settings, outage_ok=True)
    fallback = BaselineModelProvider(refit_seconds=settings.model_refit_seconds)
    detector: Detector | None = None

    def failed(metric: str, reason: str, key: str) -> None:
        if detector is not None:
            detector.metrics.model_load_failures.labels(metric, reason).inc()

    provider = RegistryModelProvider(
        ModelRegistry(engine, keep=settings.model_keep), fallback, on_failure=failed
    )
    detector = Detector(settings, provider=provider, store=FeatureStore(engine), **kwargs)
    detector.engine = engine
    return detector
