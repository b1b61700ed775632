"""Incident grouping: one incident per cause, a probable cause with its evidence."""

from __future__ import annotations

import pytest

from aiops.core.errors import ConfigError
from detector.incidents import Dependencies, IncidentTracker, Member, service_of

SHOP = Dependencies.parse(
    {
        "shop.frontend": ["shop.checkout", "shop.search"],
        "shop.checkout": ["shop.payments"],
    }
)


def anomaly(app: str, metric: str, onset: float, reason: str = "level_shift", score=1.0):
    labels = {"namespace": "shop", "app": app}
    return Member(metric, labels, onset, (reason,), score, service_of(labels))


def test_a_storm_through_the_dependency_map_is_one_incident_caused_by_the_callee():
    t = IncidentTracker(SHOP, window=300)
    # checkout's latency is seen first (its window is shorter), payments 40 s later
    storm = [
        anomaly("checkout", "latency_p99", 1000),
        anomaly("payments", "success_rate", 1040, score=3.0),
        anomaly("checkout", "success_rate", 1060),
        anomaly("frontend", "checkouts", 1100, "percent_change"),
        anomaly("frontend", "revenue", 1120, "percent_change"),
    ]
    seen = []
    for i in range(1, len(storm) + 1):
        seen.append(t.observe(1000 + 30 * i, storm[:i]))
    assert len(t.incidents) == 1 and len(seen[0].opened) == 1
    (inc,) = t.incidents.values()
    assert len(inc.members) == 5
    assert inc.cause.service == "shop.payments" and inc.cause.query == "success_rate"
    assert inc.evidence[1] == "shop.checkout, shop.frontend depend on shop.payments"
    assert inc.as_dict()["members"][0]["service"] == "shop.payments"


def demand(app: str, onset: float) -> Member:
    """An anomaly of the catalogue's sessions query (``demand: true``)."""
    from detector.catalogue import DEFAULT_QUERIES

    (sessions,) = [q for q in DEFAULT_QUERIES if q.name == "sessions"]
    assert sessions.demand
    return Member.of(sessions, {"namespace": "shop", "app": app}, onset, ["level_shift"], 2.0)


def test_a_demand_surge_after_a_fault_downstream_is_an_incident_of_its_own():
    """Payments fails, then a campaign brings the frontend more sessions: demand is a
    cause, never an echo, and it began after the fault: two incidents."""
    t = IncidentTracker(SHOP, window=300)
    fault = anomaly("payments", "success_rate", 1000)
    t.observe(1000, [fault])
    t.observe(1120, [fault, demand("frontend", 1120)])
    assert sorted(i.cause.service for i in t.incidents.values()) == [
        "shop.frontend",
        "shop.payments",
    ]
    # the frontend's own failures are echoes of the fault: they join it
    t.observe(1180, [fault, demand("frontend", 1120), anomaly("frontend", "success_rate", 1180)])
    sizes = {i.cause.service: len(i.members) for i in t.incidents.values()}
    assert sizes == {"shop.payments": 2, "shop.frontend": 1}


def test_a_demand_surge_before_a_fault_downstream_may_be_its_cause():
    t = IncidentTracker(SHOP, window=300)
    surge = demand("frontend", 1000)
    t.observe(1000, [surge])
    t.observe(1120, [surge, anomaly("payments", "success_rate", 1120)])
    (inc,) = t.incidents.values()  # the surge may have overloaded payments: one incident
    assert len(inc.members) == 2


def test_unrelated_anomalies_at_the_same_time_stay_separate():
    t = IncidentTracker(SHOP, window=300)
    t.observe(1000, [anomaly("payments", "success_rate", 1000), anomaly("search", "p99", 1010)])
    assert len(t.incidents) == 2  # siblings under the frontend: neither calls the other
    other = Dependencies.parse({"shop.frontend": "shop.checkout"})
    t2 = IncidentTracker(other, window=300)
    t2.observe(1000, [anomaly("checkout", "success_rate", 1000), anomaly("catalog", "p99", 1000)])
    assert len(t2.incidents) == 2


def test_without_a_map_only_the_same_service_groups_and_the_first_onset_is_the_cause():
    t = IncidentTracker(Dependencies(), window=300)
    t.observe(
        1000,
        [anomaly("payments", "error_budget_burn", 1030), anomaly("payments", "success_rate", 1000)],
    )
    t.observe(
        1060,
        [
            anomaly("payments", "error_budget_burn", 1030),
            anomaly("payments", "success_rate", 1000),
            anomaly("checkout", "success_rate", 1050),
        ],
    )
    assert sorted(len(i.members) for i in t.incidents.values()) == [1, 2]
    pay = next(i for i in t.incidents.values() if len(i.members) == 2)
    assert pay.cause.query == "success_rate"
    assert pay.evidence[0] == (
        "shop.payments success_rate level_shift started 30 s before"
        " shop.payments error_budget_burn's"
    )


def test_an_echo_joins_while_its_cause_lasts_and_a_late_one_opens_a_new_incident():
    t = IncidentTracker(SHOP, window=300)
    pay = anomaly("payments", "success_rate", 1000)
    t.observe(1000, [pay])
    # checkout flagged 10 minutes later, payments still failing: the same incident
    echo = t.observe(1600, [pay, anomaly("checkout", "p99", 1600)])
    assert not echo.opened and len(t.incidents) == 1
    t2 = IncidentTracker(SHOP, window=300)
    t2.observe(1000, [pay])
    t2.observe(1060, [anomaly("checkout", "p99", 1060)])  # payments ended at 1060
    t2.observe(1300, [anomaly("checkout", "p99", 1060), anomaly("payments", "p99", 1300)])
    assert len(t2.incidents) == 1  # checkout joined as payments ended, and still lasts
    t3 = IncidentTracker(SHOP, window=300)
    t3.observe(1000, [pay])
    t3.observe(1030, [])
    late = t3.observe(1400, [anomaly("checkout", "p99", 1400)])
    assert len(late.opened) == 1 and len(t3.incidents) == 1  # the first one closed


def test_an_incident_ends_with_its_last_member_and_its_id_is_stable():
    def run():
        t = IncidentTracker(SHOP, window=300)
        a, b = anomaly("payments", "success_rate", 1000), anomaly("checkout", "p99", 1020)
        first = t.observe(1000, [a])
        assert not t.observe(1030, [a, b]).closed
        assert not t.observe(1060, [b]).closed  # payments ended, checkout still anomalous
        (inc,) = t.incidents.values()
        assert [m.ended_at for m in inc.members.values()] == [1060, None]
        done = t.observe(1090, [])
        assert [i.id for i in done.closed] == [first.opened[0].id] and not t.incidents
        assert done.closed[0].closed_at == 1090
        return first.opened[0].id

    assert run() == run()


def test_a_series_that_starts_again_is_a_new_member_of_a_new_incident():
    t = IncidentTracker(SHOP, window=300)
    a = anomaly("payments", "success_rate", 1000)
    t.observe(1000, [a])
    t.observe(1030, [])
    again = t.observe(2000, [anomaly("payments", "success_rate", 2000)])
    assert len(again.opened) == 1 and again.opened[0].opened_at == 2000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["shop.a"], "must be a mapping"),
        ({"shop.a": 3}, "shop.a: must be a list"),
        ({"shop.a": ["shop.a"]}, "cannot depend on itself"),
        ({"shop.a": [""]}, "must be a list"),
    ],
)
def test_a_bad_dependency_map_is_one_line_naming_the_entry(raw, message):
    with pytest.raises(ConfigError, match=message):
        Dependencies.parse(raw)


def test_a_dependency_cycle_does_not_hang_and_relates_both():
    deps = Dependencies.parse({"a": ["b"], "b": ["a"]})
    assert deps.calls("a", "b") and deps.calls("b", "a") and not deps.calls("a", "c")


def test_the_config_file_holds_the_map_and_the_group_by_and_a_bad_map_stops_the_start(
    tmp_path, monkeypatch
):
    from aiops.core.settings import load_settings
    from detector.catalogue import resolve_catalogue

    monkeypatch.delenv("AIOPS_METRICS", raising=False)
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(
        "depends_on:\n  shop.checkout: shop.payments\n"
        "queries:\n  - name: errors\n    promql: up\n    group_by: [service]\n"
    )
    s = load_settings(config=cfg)
    (q,) = resolve_catalogue(s)
    assert q.group_by == ("service",)
    assert service_of({"service": "payments", "pod": "p-1"}, q.group_by) == "payments"
    assert Dependencies.parse(s.depends_on).calls("shop.checkout", "shop.payments")
    cfg.write_text("depends_on:\n  shop.checkout: 3\n")
    with pytest.raises(ConfigError, match=r"^AIOPS_CONFIG: depends_on: shop.checkout: must be"):
        resolve_catalogue(load_settings(config=cfg))
    cfg.write_text("queries:\n  - name: errors\n    promql: up\n    group_by: [__name__]\n")
    with pytest.raises(ConfigError, match="group_by"):
        resolve_catalogue(load_settings(config=cfg))


def test_a_deploy_just_before_the_onset_names_the_cause_and_says_so():
    from detector.incidents import Change

    t = IncidentTracker(SHOP, window=300)
    deploy = Change("shop.checkout", 910, "deploy", "v2.4.1")
    late = Change("shop.payments", 1100, "deploy")  # after the onset: no cause
    old = Change("shop.payments", 1000 - 3600, "deploy")  # an hour before: no cause
    members = [anomaly("payments", "success_rate", 1000), anomaly("checkout", "p99", 1010)]
    t.observe(1010, members, [deploy, late, old])
    (inc,) = t.incidents.values()
    # payments is what checkout calls, but checkout was deployed 100 s before its onset
    assert inc.cause.service == "shop.checkout"
    assert inc.evidence[1] == "shop.checkout was deployed (v2.4.1) 100 s before its onset"
    assert [c.service for c in inc.changes] == ["shop.checkout"]
    assert inc.as_dict()["changes"][0]["description"] == "v2.4.1"
    t2 = IncidentTracker(SHOP, window=300)
    t2.observe(1010, members, [late, old])
    assert next(iter(t2.incidents.values())).cause.service == "shop.payments"


def test_a_big_storm_is_grouped_without_comparing_every_pair():
    """5,000 series of 200 chained services: one incident, its cause at the end of the
    chain, and the service index empty again once it closed (``python bench/grouping.py``
    times it: 0.2 s; comparing every pair took 280 s)."""
    chain = Dependencies.parse({f"ns.s{i}": [f"ns.s{i + 1}"] for i in range(199)})
    storm = [
        Member(
            f"q{j}",
            {"namespace": "ns", "app": f"s{i}", "pod": str(j)},
            1000.0 + j % 60,
            ("level_shift",),
            1.0,
            f"ns.s{i}",
        )
        for i in range(200)
        for j in range(25)
    ]
    t = IncidentTracker(chain, 300)
    t.observe(1100, storm)
    (inc,) = t.incidents.values()
    assert inc.cause.service == "ns.s199" and len(inc.members) == 5000
    assert set(inc.by_service) == {f"ns.s{i}" for i in range(200)}
    t.observe(1160, [])
    assert not t.incidents and t._incidents_of == {}
