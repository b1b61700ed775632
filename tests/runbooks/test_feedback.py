"""``POST /feedback``: an operator's verdict on an anomaly is authenticated, stored once per
person, audited, counted in ``aiops_feedback_total``, and the detector applies it at its
next cycle."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from aiops.core.settings import load_settings
from detector.catalogue import Query
from detector.cycle import Detector
from feature_store.store import FeatureStore
from tests.detector.test_exporter import ScriptedSource, series

FEEDBACK_TOKEN = "feedback-token-for-tests"
GIVER = {"Authorization": f"Bearer {FEEDBACK_TOKEN}", "X-Actor": "alice"}
LABELS = {"namespace": "shop", "app": "checkout"}


def next_cycle(det: Detector) -> float:
    """The time of the detector's next cycle: a minute on, and never before now (its
    clock is the wall clock here: a verdict counts from when it was given)."""
    return max((det.last_cycle or 0.0) + 60.0, time.time() + 1.0)


def detector_on(hook, monkeypatch) -> tuple[Detector, ScriptedSource]:
    """A detector of checkout's p99 latency writing to the hook's database."""
    for k in ("AIOPS_METRICS", "AIOPS_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    query = Query(name="latency_p99", promql="x", direction="up", labels=("namespace", "app"))
    source = ScriptedSource()
    det = Detector(
        load_settings(interval_seconds=60),
        queries=[query],
        source=source,
        store=FeatureStore(hook.engine),
    )
    source.rows["latency_p99"] = ([LABELS], series(1, shift=0.02)[None, :])
    return det, source


@pytest.fixture
def flagged(make_hook, monkeypatch):
    """A hook, and a detector whose first cycle flagged checkout's latency (recorded)."""
    hook = make_hook(feedback_token=FEEDBACK_TOKEN)
    det, _ = detector_on(hook, monkeypatch)
    (r,) = det.run_cycle(time.time()).all_results()
    assert r.anomalous and "level_shift" in [x.reason for x in r.reasons]
    return hook, det, r


def verdict(r, verdict: str = "false_alarm", **kw) -> dict:
    return {
        "metric": "latency_p99",
        "labels": dict(r.labels),
        "started_at": r.started_at,
        "verdict": verdict,
        **kw,
    }


def test_feedback_needs_its_token_names_the_anomaly_and_is_stored_once_per_person(flagged):
    hook, _, r = flagged
    body = verdict(r, note="the nightly batch")
    assert hook.client.post("/feedback", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert hook.client.post("/feedback", json=body, headers=wrong).status_code == 401
    unknown = hook.client.post("/feedback", json={**body, "started_at": 12.0}, headers=GIVER)
    assert unknown.status_code == 404 and "no anomaly of latency_p99" in unknown.json()["error"]
    bad = hook.client.post("/feedback", json={**body, "verdict": "meh"}, headers=GIVER)
    assert bad.status_code == 422
    first = hook.client.post("/feedback", json=body, headers=GIVER)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["feedback"] == "recorded" and out["verdict"] == "false_alarm"
    (floor,) = [f for f in out["floors"] if f["reason"] == "level_shift"]
    assert 1.0 < floor["raise_factor"] <= 3.0  # bounded (AIOPS_FEEDBACK_MAX_RAISE)
    # the same person changes their mind: replaced, not added; another person adds one
    again = hook.client.post("/feedback", json=verdict(r, "incident"), headers=GIVER)
    assert again.json()["feedback"] == "replaced"
    bob = {**GIVER, "X-Actor": "bob"}
    assert hook.client.post("/feedback", json=body, headers=bob).json()["feedback"] == "recorded"
    rows = FeatureStore(hook.engine).feedback()
    assert sorted((x["actor"], x["verdict"]) for x in rows) == [
        ("alice", "incident"),
        ("bob", "false_alarm"),
    ]
    stored = next(x for x in rows if x["actor"] == "bob")
    assert stored["note"] == "the nightly batch" and stored["score"] >= 1.0
    assert {x["reason"] for x in stored["reasons"]} >= {"level_shift"}
    # audited, with who said it; counted per query, reason and verdict
    audited = hook.audit(kind="feedback")
    assert [a["actor"] for a in audited] == ["alice", "alice", "bob"]
    assert audited[1]["details"]["replaced"] is True
    assert hook.audit(kind="unauthorized")  # the refusals too
    sample = {"query": "latency_p99", "reason": "level_shift"}
    assert hook.metric("aiops_feedback_total", **sample, verdict="false_alarm") == 1.0
    assert hook.metric("aiops_feedback_total", **sample, verdict="incident") == 1.0


def test_without_a_feedback_or_admin_token_nobody_gives_feedback(make_hook):
    hook = make_hook()
    r = hook.client.post("/feedback", json={}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 401 and "RUNBOOK_FEEDBACK_TOKEN is not set" in r.json()["error"]
    admin = make_hook(admin_token="admin-token-for-tests-1")
    r = admin.client.post(
        "/feedback",
        json={"metric": "m", "labels": {}, "started_at": 1.0, "verdict": "incident"},
        headers={"Authorization": "Bearer admin-token-for-tests-1"},
    )
    assert r.status_code == 404  # the admin token may give feedback: the anomaly is unknown


def test_the_detector_applies_a_false_alarm_at_its_next_cycle(flagged):
    hook, det, r = flagged
    # without feedback the same data stays anomalous
    (same,) = det.run_cycle(next_cycle(det)).all_results()
    assert same.anomalous
    ok = hook.client.post("/feedback", json=verdict(r), headers=GIVER)
    assert ok.status_code == 200, ok.text
    (after,) = det.run_cycle(next_cycle(det)).all_results()
    assert not after.anomalous  # not held, and below its floor now
    assert det.feedback is not None and len(det.feedback.verdicts) == 1
    # a shift three times as large is still news on that series
    source = det.source
    source.rows["latency_p99"] = ([LABELS], series(1, shift=0.15)[None, :])
    (bigger,) = det.run_cycle(next_cycle(det)).all_results()
    assert bigger.anomalous and bigger.score >= 1.0
    assert np.isfinite(bigger.score)


def test_the_cli_adds_lists_shows_effects_and_exports_labels_for_backtests(flagged):
    import json

    from aiops.core.series import series_name
    from tests.integration.conftest import detector_env, run_aiops

    hook, _, r = flagged
    env = detector_env(AIOPS_DATABASE_URL=hook.settings.database_url)
    labels = [a for k, v in sorted(r.labels.items()) for a in ("--label", f"{k}={v}")]
    common = ["--metric", "latency_p99", *labels]
    unknown = run_aiops(
        "feedback", "add", *common, "--started-at", "12", "--verdict", "incident", env=env
    )
    assert unknown.returncode != 0 and "no anomaly of latency_p99" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    given = run_aiops(
        "feedback",
        "add",
        *common,
        "--started-at",
        repr(r.started_at),
        "--verdict",
        "incident",
        "--note",
        "checkout really was slow",
        env=env,
    )
    assert given.returncode == 0, given.stderr
    assert "recorded: incident on latency_p99" in given.stdout
    (row,) = hook.audit(kind="feedback")
    assert row["actor"].startswith("cli:") and row["details"]["verdict"] == "incident"
    listed = run_aiops("feedback", "list", env=env)
    assert "incident" in listed.stdout and "checkout really was slow" in listed.stdout
    effects = run_aiops("feedback", "list", "--effects", env=env)
    assert "level_shift" in effects.stdout and "cap" in effects.stdout  # protects its strength
    exported = run_aiops("feedback", "export", "--format", "labels", env=env)
    assert exported.returncode == 0, exported.stderr
    windows = json.loads(exported.stdout)
    key = series_name("latency_p99", dict(r.labels)) + ".csv"
    assert list(windows) == [key] and len(windows[key]) == 1
    # the window reads as aiops backtest --labels reads it
    from training.nab import load_windows

    path = hook.trace.parent / "labels.json"
    path.write_text(exported.stdout)
    ((start, end),) = load_windows(path)[key]
    assert start.timestamp() == pytest.approx(r.started_at) and end >= start
    bad = run_aiops("feedback", "export", "--format", "xml", env=env)
    assert bad.returncode != 0 and "--format" in bad.stderr


def test_the_console_lists_anomalies_with_signed_links_that_record_once_per_person(flagged):
    from urllib.parse import parse_qs, urlsplit

    from runbooks.feedback import feedback_link

    hook, det, r = flagged
    assert hook.client.get("/console/anomalies").status_code == 401  # a read endpoint
    unnamed = hook.read("/console/anomalies").json()
    (anomaly,) = unnamed["anomalies"]
    assert "false_alarm_url" not in anomaly and "name yourself" in unnamed["note"]
    (anomaly,) = hook.read("/console/anomalies", params={"by": "alice"}).json()["anomalies"]
    assert anomaly["series"] == 'latency_p99{app="checkout",namespace="shop"}'
    assert anomaly["started_at"] == r.started_at and "level_shift" in anomaly["reasons"]
    url = anomaly["false_alarm_url"]
    # a link is bound to its anomaly, person and verdict: changing any of them is a 403
    query = parse_qs(urlsplit(url).query)
    for name, value in (("by", "mallory"), ("verdict", "incident"), ("started_at", "12.0")):
        forged = {**{k: v[0] for k, v in query.items()}, name: value}
        assert hook.client.get("/feedback/link", params=forged).status_code == 403, name
    expired = feedback_link(
        "approval-secret", "latency_p99", dict(r.labels), r.started_at, "alice", "incident", 0.0
    )
    assert hook.client.get(expired).status_code == 410
    # one click records alice's verdict; a second click on it is a 409
    first = hook.client.get(url + "&note=the+nightly+batch")
    assert first.status_code == 200, first.text
    assert first.json()["feedback"] == "recorded"
    assert hook.client.get(url).status_code == 409
    (row,) = FeatureStore(hook.engine).feedback()
    assert (row["actor"], row["verdict"], row["note"]) == (
        "alice",
        "false_alarm",
        "the nightly batch",
    )
    (audited,) = hook.audit(kind="feedback")
    assert audited["actor"] == "alice" and audited["details"]["via"] == "link"
    hook.flush_refusals()  # the refusals of this minute after the first: one row
    refused = [a["details"]["route"] for a in hook.audit(kind="unauthorized")]
    assert refused.count("/feedback/link") == 2 and "/console/anomalies" in refused
    (summary,) = [a for a in hook.audit(kind="unauthorized") if "aggregated" in a["details"]]
    assert summary["details"]["route"] == "/feedback/link"
    assert summary["details"]["aggregated"] == 3  # the forged ones after the first
    # the list shows the verdict; the threshold moved; /metrics counts it
    (listed,) = hook.read("/console/anomalies").json()["anomalies"]
    assert listed["verdicts"] == [
        {"actor": "alice", "verdict": "false_alarm", "note": "the nightly batch"}
    ]
    (after,) = det.run_cycle(next_cycle(det)).all_results()
    assert not after.anomalous
    metric = {"query": "latency_p99", "reason": "level_shift", "verdict": "false_alarm"}
    assert hook.metric("aiops_feedback_total", **metric) == 1.0


def test_a_database_outage_is_a_503_and_loses_nothing_once_it_is_back(flagged):
    hook, _, r = flagged
    db = Path(hook.settings.database_url.removeprefix("sqlite:///"))
    hook.engine.dispose()
    moved = db.with_name("moved.db")
    db.rename(moved)
    db.mkdir()  # the path is now a folder: every query fails
    try:
        down = hook.client.post("/feedback", json=verdict(r), headers=GIVER)
        assert down.status_code == 503 and "error" in down.json()
    finally:
        db.rmdir()
        moved.rename(db)
    again = hook.client.post("/feedback", json=verdict(r), headers=GIVER)  # the retry
    assert again.status_code == 200 and again.json()["feedback"] == "recorded"
    assert len(FeatureStore(hook.engine).feedback()) == 1
