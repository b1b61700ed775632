"""The storm suite: storms that spread through the dependency map become one incident
with the failed service as its probable cause; unrelated faults stay apart."""

from __future__ import annotations

from training.storms import SPECS, storm_results, summarise_storms


def test_the_first_storm_of_each_kind_is_grouped_right_through_the_live_detector():
    kinds = ("spread/payments", "spread/checkout", "unrelated/", "single/", "deploy/")
    kinds += ("coincidence/",)  # a campaign's sessions while payments fails: kept apart
    specs = [next(s for s in SPECS if s.name.startswith(k)) for k in kinds]
    per = storm_results(specs)
    assert len(per) == 8  # the unrelated and the coincidence storms hold two each
    assert (per["flagged"] > 0).all(), per.to_string()
    figures = summarise_storms(per)
    assert figures["grouped"] == 1.0, per.to_string()
    assert figures["cause_right"] == 1.0, per.to_string()
    assert figures["merged_wrongly"] == 0.0, per.to_string()
    assert figures["pages_per_incident"] == 1.0, per.to_string()


def test_without_the_map_a_spreading_storm_pages_once_per_service():
    from aiops.core.settings import load_settings
    from detector.incidents import Dependencies
    from training.storms import group, run_storm

    spec = next(s for s in SPECS if s.name.startswith("spread/payments"))
    run = run_storm(spec, load_settings(metrics=None, config=None))
    (row,) = group(run, Dependencies(), 300.0)["rows"]
    assert row["incidents"] == 3 and not row["grouped"]  # payments, checkout, frontend


def test_the_announced_deploy_is_what_names_the_released_service():
    from dataclasses import replace

    from aiops.core.settings import load_settings
    from detector.incidents import Dependencies
    from training.storms import DEPENDS_ON, group, run_storm

    spec = next(s for s in SPECS if s.name.startswith("deploy/"))
    run = run_storm(spec, load_settings(metrics=None, config=None))
    deps = Dependencies.parse(DEPENDS_ON)
    (with_deploy,) = group(run, deps, 300.0)["rows"]
    assert with_deploy["cause"] == "shop.frontend"
    run.spec = replace(spec, changes=())  # nobody announced the release
    (without,) = group(run, deps, 300.0)["rows"]
    assert without["cause"] == "shop.checkout"  # what the frontend calls


def test_without_the_demand_rule_the_campaign_is_merged_with_the_fault():
    """The campaign's sessions are a demand series: with the flag off, the frontend's
    surge joins payments' incident (the frontend calls payments)."""
    from aiops.core.settings import load_settings
    from detector.incidents import Dependencies
    from training import storms

    spec = next(s for s in SPECS if s.name.startswith("coincidence/"))
    run = storms.run_storm(spec, load_settings(metrics=None, config=None))
    deps = Dependencies.parse(storms.DEPENDS_ON)
    kept = storms.group(run, deps, 300.0)["rows"]
    assert [r["merged"] for r in kept] == [False, False]
    plain = storms.QUERIES["sessions"]
    storms.QUERIES["sessions"] = plain.model_copy(update={"demand": False})
    try:
        merged = storms.group(run, deps, 300.0)["rows"]
    finally:
        storms.QUERIES["sessions"] = plain
    assert [r["merged"] for r in merged] == [True, True]
