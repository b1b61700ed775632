"""The live cycle groups the anomalies of related series into one incident and exports
it with its probable cause (aiops_incident_info, aiops_incident_members)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import Detector
from tests.detector.test_exporter import ScriptedSource, series

SLO = ("namespace", "app")
QUERIES = [
    Query(name="success_rate", promql="x", direction="down", labels=SLO),
    Query(name="latency_p99", promql="y", direction="up", labels=SLO),
]
DEPENDS = {"shop.frontend": ["shop.checkout"], "shop.checkout": ["shop.payments"]}


def detector(monkeypatch, **settings):
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    source = ScriptedSource()
    registry = CollectorRegistry()
    s = load_settings(interval_seconds=60, depends_on=DEPENDS, **settings)
    return Detector(s, queries=QUERIES, source=source, registry=registry), source, registry


def apps(*names):
    return [{"namespace": "shop", "app": a} for a in names]


def test_a_payments_storm_is_one_incident_with_payments_as_its_probable_cause(monkeypatch):
    det, source, reg = detector(monkeypatch)
    now = 1_700_000_000.0
    # payments fails; checkout (which calls it) gets slower; search is fine
    source.rows["success_rate"] = (
        apps("payments", "checkout", "search"),
        np.stack([series(1, -0.1), series(2, -0.05), series(3)]),
    )
    source.rows["latency_p99"] = (
        apps("checkout", "search"),
        np.stack([series(4, 0.1), series(5)]),
    )
    report = det.run_cycle(now)
    assert sum(r.anomalous for r in report.all_results()) == 3
    (inc,) = report.incidents
    assert len(inc.members) == 3
    assert (inc.cause.service, inc.cause.query) == ("shop.payments", "success_rate")
    assert "shop.checkout depends on shop.payments" in inc.evidence
    info = {
        "incident": inc.id,
        "probable_cause_namespace": "shop",
        "probable_cause_app": "payments",
        "probable_cause_metric": "success_rate",
        "reason": inc.cause.reason,
    }
    assert reg.get_sample_value("aiops_incident_info", info) == 1
    assert reg.get_sample_value("aiops_incident_members", {"incident": inc.id}) == 3

    # every member recovers: the incident closes and leaves /metrics
    source.rows["success_rate"] = (
        apps("payments", "checkout", "search"),
        np.stack([series(1), series(2), series(3)]),
    )
    source.rows["latency_p99"] = (apps("checkout", "search"), np.stack([series(4), series(5)]))
    assert det.run_cycle(now + 60).incidents == []
    assert reg.get_sample_value("aiops_incident_members", {"incident": inc.id}) is None


def test_without_the_map_each_app_is_its_own_incident(monkeypatch):
    det, source, _ = detector(monkeypatch)
    det.incidents.dependencies = type(det.incidents.dependencies)()
    source.rows["success_rate"] = (
        apps("payments", "checkout"),
        np.stack([series(1, -0.1), series(2, -0.05)]),
    )
    source.rows["latency_p99"] = (apps("checkout"), series(4, 0.1)[None, :])
    report = det.run_cycle(1_700_000_000.0)
    assert sorted(len(i.members) for i in report.incidents) == [1, 2]


def test_a_deploy_announced_to_the_store_names_the_cause_of_the_next_incident(
    monkeypatch, tmp_path
):
    from aiops.core.db import make_engine
    from feature_store.store import FeatureStore
    from sql.migrate import migrate

    engine = make_engine(f"sqlite:///{tmp_path}/aiops.db")
    migrate(engine)
    store = FeatureStore(engine)
    det, source, _ = detector(monkeypatch)
    det.store = store
    now = 1_700_000_000.0
    assert store.record_change(
        "ci-42",
        at=now - 120,
        service="shop.checkout",
        kind="deploy",
        description="v2.4.1",
        source="webhook",
        received_at=now - 119,
    )
    source.rows["success_rate"] = (
        apps("payments", "checkout"),
        np.stack([series(1, -0.1), series(2, -0.05)]),
    )
    source.rows["latency_p99"] = (apps("checkout"), series(4, 0.1)[None, :])
    (inc,) = det.run_cycle(now).incidents
    assert inc.cause.service == "shop.checkout"  # deployed 2 minutes before, it is the cause
    lead = inc.cause.onset - (now - 120)  # the onset is the newest grid point
    assert f"shop.checkout was deployed (v2.4.1) {lead:.0f} s before its onset" in inc.evidence
    engine.dispose()


def test_a_change_query_over_prometheus_names_the_deployed_service(monkeypatch):
    changes = [
        {
            "name": "deployments",
            "promql": "changes(kube_deployment_status_observed_generation[5m]) > 0",
            "service": ["namespace", "deployment"],
        }
    ]
    det, source, _ = detector(monkeypatch, change_queries=changes)
    now = 1_700_000_000.0
    rollout = np.full(361, np.nan)
    rollout[-3:] = 1.0  # kube-state-metrics saw checkout's generation change 2 steps ago
    source.rows["deployments"] = (
        [{"namespace": "shop", "deployment": "checkout"}],
        rollout[None, :],
    )
    source.rows["success_rate"] = (
        apps("payments", "checkout"),
        np.stack([series(1, -0.1), series(2, -0.05)]),
    )
    source.rows["latency_p99"] = (apps("checkout"), series(4, 0.1)[None, :])
    (inc,) = det.run_cycle(now).incidents
    assert inc.cause.service == "shop.checkout"
    assert any(e.startswith("shop.checkout was deployed (deployments)") for e in inc.evidence)
    # the same positive run is one change, not one per cycle
    assert det.changes.poll(now + 60, 60.0) == []


def test_a_bad_change_query_stops_the_start_naming_the_entry(monkeypatch):
    import pytest

    from aiops.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^AIOPS_CONFIG: changes\[0\]: kind"):
        detector(monkeypatch, change_queries=[{"name": "d", "promql": "x", "kind": "reboot"}])


def test_detect_once_prints_each_incident_with_its_cause_and_evidence(monkeypatch):
    from aiops.cli import incident_lines

    det, source, _ = detector(monkeypatch)
    source.rows["success_rate"] = (
        apps("payments", "checkout"),
        np.stack([series(1, -0.1), series(2, -0.05)]),
    )
    source.rows["latency_p99"] = (apps("checkout"), series(4, 0.1)[None, :])
    (inc,) = det.run_cycle(1_700_000_000.0).incidents
    lines = incident_lines([inc])
    assert lines[0].startswith(f"incident {inc.id}: probable cause shop.payments success_rate")
    assert lines[0].endswith("; 3 members")
    assert "  shop.checkout depends on shop.payments" in lines


# -- one event per incident to the webhook ----------------------------------------------


def storm_rows(source, *, latency: bool, healthy: bool = False) -> None:
    """payments fails and checkout's success rate follows; ``latency``: checkout's p99 too."""
    shift = 0.0 if healthy else 1.0
    source.rows["success_rate"] = (
        apps("payments", "checkout", "search"),
        np.stack([series(1, -0.1 * shift), series(2, -0.05 * shift), series(3)]),
    )
    source.rows["latency_p99"] = (
        apps("checkout", "search"),
        np.stack([series(4, 0.1 * shift if latency else 0.0), series(5)]),
    )


def posted(server) -> list[dict]:
    import json

    return [json.loads(body) for _, body in server.got]


def test_the_webhook_gets_one_event_per_incident_a_revision_per_member_and_one_resolved(
    monkeypatch,
):
    from tests.runbooks.conftest import SECRET
    from tests.runbooks.test_notify import scripted

    server = scripted()
    url = f"http://127.0.0.1:{server.server_address[1]}/anomalies"
    det, source, _ = detector(monkeypatch, webhook_url=url, webhook_secret=SECRET)
    now = 1_700_000_000.0
    storm_rows(source, latency=False)
    (inc,) = det.run_cycle(now).incidents  # settling: nothing posted yet
    det.run_cycle(now + 60)  # settled (AIOPS_INCIDENT_SETTLE_SECONDS, 60): posted
    det.run_cycle(now + 120)  # nothing new: no event
    storm_rows(source, latency=True)  # checkout's p99 joins
    det.run_cycle(now + 180)
    storm_rows(source, latency=True, healthy=True)
    assert det.run_cycle(now + 240).incidents == []
    assert det.notifier.drain()
    events = posted(server)
    assert [(e["status"], e["incident"]["revision"]) for e in events] == [
        ("firing", 1),
        ("firing", 2),
        ("resolved", 2),
    ]
    assert {e["id"] for e in events} == {inc.id}
    first, second, _ = events
    # the probable cause on top, every member listed (the cause first)
    assert (first["metric"], first["labels"]["app"]) == ("success_rate", "payments")
    assert first["incident"]["cause"] == "shop.payments"
    assert [m["service"] for m in first["incident"]["members"]] == [
        "shop.payments",
        "shop.checkout",
    ]
    assert second["incident"]["member_count"] == 3
    assert any("depends on shop.payments" in line for line in second["incident"]["evidence"])
    server.shutdown()


def test_a_restarted_detector_keeps_the_incident_and_resolves_it_with_the_same_id(
    monkeypatch, tmp_path
):
    from aiops.core.db import make_engine
    from feature_store.store import FeatureStore
    from sql.migrate import migrate
    from tests.runbooks.conftest import SECRET
    from tests.runbooks.test_notify import scripted

    engine = make_engine(f"sqlite:///{tmp_path}/store.db")
    migrate(engine)
    server = scripted()
    url = f"http://127.0.0.1:{server.server_address[1]}/anomalies"

    def start():
        for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
            monkeypatch.delenv(k, raising=False)
        s = load_settings(
            interval_seconds=60, depends_on=DEPENDS, webhook_url=url, webhook_secret=SECRET
        )
        source = ScriptedSource()
        det = Detector(s, queries=QUERIES, source=source, store=FeatureStore(engine))
        return det, source

    det, source = start()
    now = 1_700_000_000.0
    storm_rows(source, latency=True)
    (inc,) = det.run_cycle(now).incidents
    det.run_cycle(now + 60)  # settled (AIOPS_INCIDENT_SETTLE_SECONDS): posted
    assert det.notifier.drain()
    det.notifier.close()
    again, source = start()  # the outbox remembers the open incident's onsets
    storm_rows(source, latency=True)
    assert [i.id for i in again.run_cycle(now + 120).incidents] == [inc.id]
    storm_rows(source, latency=True, healthy=True)
    again.run_cycle(now + 180)
    assert again.notifier.drain()
    events = posted(server)
    assert [(e["id"], e["status"]) for e in events] == [(inc.id, "firing"), (inc.id, "resolved")]
    again.notifier.close()
    server.shutdown()
    engine.dispose()
