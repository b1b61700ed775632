"""The shipped Prometheus rules and the Alertmanager example pass Prometheus' own tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_binary

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "rules"
EXAMPLE = RULES.parent / "alertmanager-route.example.yml"
ALERTS = {
    "AIOpsAnomalyDetected",
    "AIOpsDetectorDown",
    "AIOpsDetectorStale",
    "AIOpsIncident",
    "AIOpsSpikeDetected",
    "RunbooksActionFailures",
    "RunbooksBlastRadiusReached",
    "RunbooksCircuitOpen",
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=RULES)


def test_promtool_check_rules_passes():
    promtool = require_binary("/usr/bin/promtool")
    files = sorted(RULES.glob("*.rules.yml"))
    assert files
    proc = run(promtool, "check", "rules", *map(str, files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert():
    promtool = require_binary("/usr/bin/promtool")
    tests = sorted(RULES.glob("*.rules.test.yml"))
    proc = run(promtool, "test", "rules", *map(str, tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    defined = {
        r["alert"]
        for f in RULES.glob("*.rules.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert defined == ALERTS
    tested = {
        case["alertname"]
        for f in tests
        for t in yaml.safe_load(f.read_text())["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a case that expects the alert to fire
    }
    assert tested == ALERTS


def test_anomaly_alert_carries_the_labels_and_links_the_dashboard():
    rules = {
        r.get("alert"): r
        for f in RULES.glob("*.rules.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    }
    alert = rules["AIOpsAnomalyDetected"]
    for label in ("metric", "namespace", "app", "reason"):
        assert label in alert["expr"]
    assert alert["labels"]["severity"]
    assert "/d/aiops-xai/" in alert["annotations"]["dashboard"]
    assert "{{ $labels.reason }}" in alert["annotations"]["summary"]


def test_alertmanager_route_example_is_a_valid_config():
    amtool = require_binary("/usr/bin/amtool")
    proc = subprocess.run(
        [amtool, "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(EXAMPLE.read_text())
    hook = config["receivers"][1]["webhook_configs"][0]
    assert hook["url"].endswith("/alertmanager") and hook["send_resolved"] is True
