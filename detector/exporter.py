"""Prometheus metrics of the detector: the anomaly gauges (DESIGN 4.2) and self-monitoring.

The anomaly gauges come from a custom collector that holds one snapshot per
query and is replaced whole at the end of each cycle: a series that vanished
from Prometheus, or a reason that ended, is simply not in the new snapshot, so
its label set disappears from /metrics (never left at a stale value). Series of
different queries may keep different labels, which a fixed-label Gauge could not
express.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from detector.incidents import Incident
from detector.result import SeriesResult

CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class AnomalyCollector(Collector):
    """``aiops_anomaly_*`` gauges from the latest results of every query.

    ``update`` turns a query's results into samples once per cycle; a scrape only
    gathers the samples of every query (nothing is rebuilt per scrape).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._snapshots: dict[str, list[list[Sample]]] = {}
        if registry is not None:
            registry.register(self)

    def update(self, query: str, results: Iterable[SeriesResult]) -> None:
        """Replace everything exported for ``query`` with ``results``."""
        families = self._families()
        current, score, forest, info, zscore, delta, model, model_age = families
        for r in results:
            labels = {"metric": r.metric, **r.labels}
            current.add_sample("aiops_anomaly_current", labels, 1.0 if r.anomalous else 0.0)
            if r.status != "ok":
                continue
            if r.model_version:
                trained = "baseline" if r.model_version.startswith("baseline") else "registry"
                model.add_sample(
                    "aiops_model_info",
                    {**labels, "version": r.model_version, "source": trained},
                    1.0,
                )
                if r.model_fitted_at is not None:
                    model_age.add_sample(
                        "aiops_model_age_seconds",
                        labels,
                        max(r.observed_at - r.model_fitted_at, 0.0),
                    )
            if math.isfinite(r.score):
                score.add_sample("aiops_anomaly_score", labels, r.score)
            if math.isfinite(r.forest_score):
                forest.add_sample("aiops_anomaly_forest_score", labels, r.forest_score)
            if math.isfinite(r.delta):
                delta.add_sample("aiops_anomaly_delta", labels, r.delta)
            for window, z in r.zscores.items():
                if math.isfinite(z):
                    zscore.add_sample("aiops_anomaly_zscore", {**labels, "window": window}, z)
            for reason in r.reasons:
                info.add_sample("aiops_anomaly_info", {**labels, "reason": reason.reason}, 1.0)
        snapshot = [f.samples for f in families]
        with self._lock:
            self._snapshots[query] = snapshot

    def drop(self, query: str) -> None:
        """Export nothing more for ``query`` (e.g. its data went stale)."""
        with self._lock:
            self._snapshots.pop(query, None)

    def queries(self) -> list[str]:
        with self._lock:
            return list(self._snapshots)

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshots = list(self._snapshots.values())
        families = self._families()
        for samples in snapshots:
            for family, part in zip(families, samples, strict=True):
                family.samples.extend(part)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("aiops_anomaly_current", "1 while the series is anomalous, else 0"),
            GaugeMetricFamily(
                "aiops_anomaly_score",
                "Calibrated anomaly score of the latest point: the strongest reason over the"
                " series' own threshold for it; >= 1 exactly while the series is anomalous",
            ),
            GaugeMetricFamily(
                "aiops_anomaly_forest_score",
                "IsolationForest score of the latest point, 0..1 (0.5: an ordinary point)",
            ),
            GaugeMetricFamily(
                "aiops_anomaly_info", "1 for each active reason of an anomalous series"
            ),
            GaugeMetricFamily(
                "aiops_anomaly_zscore", "z-score of the recent window against the baseline"
            ),
            GaugeMetricFamily("aiops_anomaly_delta", "recent level minus baseline level"),
            GaugeMetricFamily(
                "aiops_model_info",
                "Model version that scored the series (source: registry = trained and promoted,"
                " baseline = fitted on the lookback)",
            ),
            GaugeMetricFamily("aiops_model_age_seconds", "Age of the model that scored the series"),
        )


class IncidentCollector(Collector):
    """``aiops_incident_*`` gauges of the open incidents (``detector.incidents``), replaced
    whole at the end of each cycle: a closed incident simply disappears."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._samples: list[list[Sample]] = [[], [], []]
        if registry is not None:
            registry.register(self)

    def update(self, incidents: Iterable[Incident]) -> None:
        info, members, opened = self._families()
        for inc in incidents:
            cause = inc.cause
            if cause is None:
                continue
            info.add_sample(
                "aiops_incident_info",
                {
                    "incident": inc.id,
                    "probable_cause_namespace": cause.labels.get("namespace", ""),
                    "probable_cause_app": cause.labels.get("app", ""),
                    "probable_cause_metric": cause.query,
                    "reason": cause.reason,
                },
                1.0,
            )
            members.add_sample("aiops_incident_members", {"incident": inc.id}, len(inc.members))
            opened.add_sample(
                "aiops_incident_opened_timestamp_seconds", {"incident": inc.id}, inc.opened_at
            )
        with self._lock:
            self._samples = [list(f.samples) for f in (info, members, opened)]

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = self._samples
        families = self._families()
        for family, part in zip(families, samples, strict=True):
            family.samples.extend(part)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "aiops_incident_info",
                "1 for each open incident: anomalies of related series grouped, with the"
                " probable cause's namespace, app, metric and reason",
            ),
            GaugeMetricFamily(
                "aiops_incident_members", "Anomalous series grouped into the open incident"
            ),
            GaugeMetricFamily(
                "aiops_incident_opened_timestamp_seconds",
                "Onset of the open incident's first member (Unix seconds)",
            ),
        )


class DetectorMetrics:
    """Self-monitoring metrics (``aiops_detector_*``) on an injectable registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycle_seconds = Histogram(
            "aiops_detector_cycle_seconds",
            "Wall time of one detection cycle",
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.cycles = Counter(
            "aiops_detector_cycles", "Detection cycles by result", ["result"], registry=registry
        )
        self.last_success = Gauge(
            "aiops_detector_last_success_timestamp_seconds",
            "Unix time of the last cycle in which at least one query's answer was used",
            registry=registry,
        )
        self.query_errors = Counter(
            "aiops_detector_query_errors",
            "Failed queries by catalogue name and kind",
            ["query", "kind"],
            registry=registry,
        )
        self.query_up = Gauge(
            "aiops_detector_query_up",
            "1 if the query succeeded in the last cycle",
            ["query"],
            registry=registry,
        )
        self.query_seconds = Gauge(
            "aiops_detector_query_duration_seconds",
            "Wall time of the last range query",
            ["query"],
            registry=registry,
        )
        self.series_scored = Gauge(
            "aiops_detector_series_scored",
            "Series scored in the last cycle",
            ["query"],
            registry=registry,
        )
        self.series_warming = Gauge(
            "aiops_detector_series_warming_up",
            "Series with too little history to be scored",
            ["query"],
            registry=registry,
        )
        self.anomalies = Gauge(
            "aiops_detector_anomalies", "Series anomalous now", ["query"], registry=registry
        )
        self.prometheus_up = Gauge(
            "aiops_detector_prometheus_up",
            "1 if at least one query's answer could be used in the last cycle (0 when"
            " Prometheus is down or every answer was an error or garbage)",
            registry=registry,
        )
        self.model_info = Gauge(
            "aiops_detector_model_info",
            "Model version scoring each query (value 1)",
            ["query", "version"],
            registry=registry,
        )
        self.model_age = Gauge(
            "aiops_detector_model_age_seconds",
            "Age of the model scoring each query",
            ["query"],
            registry=registry,
        )
        self._model_versions: dict[str, str] = {}
        self.database_up = Gauge(
            "aiops_detector_database_up",
            "1 if the feature store / model registry database answered at the last cycle",
            registry=registry,
        )
        self.store_errors = Counter(
            "aiops_detector_store_errors",
            "Failed writes to the feature store by what was written",
            ["table"],
            registry=registry,
        )
        self.series_dropped = Counter(
            "aiops_detector_series_dropped",
            "Series a query returned over AIOPS_MAX_SERIES_PER_QUERY, left unscored and"
            " unexported (label cardinality cap)",
            ["query"],
            registry=registry,
        )
        self.model_load_failures = Counter(
            "aiops_detector_model_load_failures",
            "Promoted models refused at load (the baseline model scores instead), by reason",
            ["query", "reason"],
            registry=registry,
        )
        self.trained_models = Gauge(
            "aiops_detector_trained_models",
            "Promoted registry models in use, per query",
            ["query"],
            registry=registry,
        )
        self.webhook_events = Counter(
            "aiops_detector_webhook_events",
            "Anomaly events for the runbook webhook by result (sent = acknowledged, refused ="
            " 4xx, retried = an attempt failed and the event stays queued, superseded = a"
            " firing event replaced by its resolved event before it was acknowledged)",
            ["result"],
            registry=registry,
        )
        for result in ("sent", "refused", "retried", "superseded"):
            self.webhook_events.labels(result)
        self.webhook_queue_depth = Gauge(
            "aiops_detector_webhook_queue_depth",
            "Anomaly events queued for the runbook webhook, not yet acknowledged",
            registry=registry,
        )
        self.webhook_queue_dropped = Counter(
            "aiops_detector_webhook_queue_dropped",
            "Anomaly events dropped unsent because the webhook queue was full (oldest first)",
            registry=registry,
        )
        self.retrains = Counter(
            "aiops_detector_retrains",
            "Scheduled retrain runs by result",
            ["result"],
            registry=registry,
        )
        self.phase_seconds = Gauge(
            "aiops_detector_phase_seconds",
            "Wall time of each phase of the last cycle",
            ["phase"],
            registry=registry,
        )

    def set_model(self, query: str, version: str, age: float) -> None:
        old = self._model_versions.get(query)
        if old is not None and old != version:
            self.model_info.remove(query, old)
        if version:
            self.model_info.labels(query, version).set(1)
            self.model_age.labels(query).set(age)
            self._model_versions[query] = version

    def forget_query(self, query: str) -> None:
        for gauge in (self.series_scored, self.series_warming, self.anomalies, self.model_age):
            with contextlib.suppress(KeyError):
                gauge.remove(query)
        old = self._model_versions.pop(query, None)
        if old is not None:
            self.model_info.remove(query, old)
