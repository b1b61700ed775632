"""Settings and the query catalogue: defaults, overrides, and one clear line per bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiops.core.errors import ConfigError
from aiops.core.settings import Settings, load_settings
from detector.catalogue import DEFAULT_QUERIES, resolve_catalogue

ENV_KEYS = [k for k in os.environ if k.startswith(("AIOPS_", "PROM_", "RUNBOOK"))]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)


def test_defaults_match_the_design():
    s = load_settings()
    assert s.prom_url == "http://localhost:9090"
    assert s.interval_seconds == 60
    assert (s.z_thresh, s.vol_mult, s.pct_thresh) == (3.0, 2.0, 0.3)
    # the design's default, made absolute once, where it enters (against the folder the
    # command starts in), so nothing later depends on the working directory
    assert Settings.model_fields["database_url"].default == "sqlite:///./var/aiops.db"
    assert s.database_url == f"sqlite:///{Path.cwd() / 'var' / 'aiops.db'}"
    assert [q.name for q in resolve_catalogue(s)] == [q.name for q in DEFAULT_QUERIES]


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("PROM_URL", "http://prom:9090/")
    monkeypatch.setenv("AIOPS_Z_THRESH", "4.5")
    monkeypatch.setenv("PROM_TOKEN", "s3cret")
    s = load_settings()
    assert s.prom_url == "http://prom:9090"
    assert s.z_thresh == 4.5
    assert s.prom_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("AIOPS_Z_THRESH", "abc", "AIOPS_Z_THRESH: Input should be a valid number"),
        ("AIOPS_Z_THRESH", "-1", "AIOPS_Z_THRESH: Input should be greater than 0"),
        ("AIOPS_VOL_MULT", "0.5", "AIOPS_VOL_MULT: Input should be greater than 1"),
        ("AIOPS_INTERVAL_SECONDS", "0", "AIOPS_INTERVAL_SECONDS: Input should be greater than 0"),
        ("PROM_URL", "localhost:9090", "PROM_URL: must be an http(s) URL"),
        ("AIOPS_LOOKBACK", "6 hours", "AIOPS_LOOKBACK: not a duration"),
        ("AIOPS_LOG_LEVEL", "chatty", "AIOPS_LOG_LEVEL: Input should be"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, var, value, expected):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_metrics_selects_and_defines_queries(monkeypatch):
    monkeypatch.setenv(
        "AIOPS_METRICS", 'latency_p99; cpu=sum by (pod) (rate(cpu_seconds_total{job="x"}[5m]))'
    )
    qs = resolve_catalogue(load_settings())
    assert [q.name for q in qs] == ["latency_p99", "cpu"]
    assert qs[0].direction == "up"
    assert qs[1].promql == 'sum by (pod) (rate(cpu_seconds_total{job="x"}[5m]))'
    assert qs[1].direction == "both"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nope", "AIOPS_METRICS: unknown query 'nope'"),
        ("9x=up", "AIOPS_METRICS: invalid query name '9x'"),
        ("x=", "AIOPS_METRICS: query 'x' has an empty PromQL"),
        ("latency_p99;latency_p99", "AIOPS_METRICS: query 'latency_p99' named twice"),
    ],
)
def test_bad_metrics(monkeypatch, spec, expected):
    monkeypatch.setenv("AIOPS_METRICS", spec)
    with pytest.raises(ConfigError) as info:
        resolve_catalogue(load_settings())
    assert str(info.value).startswith(expected)


def test_yaml_config_holds_catalogue_and_settings(tmp_path, monkeypatch):
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(
        """
AIOPS_Z_THRESH: 3.5
interval_seconds: 30
queries:
  - name: api_success
    promql: sum(rate(ok_total[5m])) / sum(rate(all_total[5m]))
    direction: down
    labels: [namespace]
    lookback: 3h
    step: 30s
"""
    )
    monkeypatch.setenv("AIOPS_CONFIG", str(cfg))
    s = load_settings()
    assert s.z_thresh == 3.5 and s.interval_seconds == 30
    (q,) = resolve_catalogue(s)
    assert (q.name, q.direction, q.labels) == ("api_success", "down", ("namespace",))
    assert q.lookback_seconds(s) == 3 * 3600 and q.step_seconds(s) == 30
    monkeypatch.setenv("AIOPS_Z_THRESH", "5")  # the environment wins over the file
    assert load_settings().z_thresh == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queries: [{name: x}]", "AIOPS_CONFIG: query 'x': promql: Field required"),
        (
            "queries: [{name: x, promql: up, direction: sideways}]",
            "AIOPS_CONFIG: query 'x': direction",
        ),
        ("queries: [{name: x, promql: up, colour: red}]", "AIOPS_CONFIG: query 'x': colour"),
        ("queries: [{name: x, promql: up, step: 1h, lookback: 2h}]", "query 'x': lookback 7200s"),
        (
            "queries: [{name: x, promql: up, windows: [1m, 5m]}]",
            "AIOPS_CONFIG: query 'x': windows: three durations, shortest first, are needed",
        ),
        (
            "queries: [{name: x, promql: up, windows: [5m, 1m, 1h]}]",
            "AIOPS_CONFIG: query 'x': windows: must grow, shortest first",
        ),
        (
            "queries: [{name: x, promql: up, windows: [30s, 1m, soon]}]",
            "AIOPS_CONFIG: query 'x': windows: not a duration: 'soon'",
        ),
        (
            "queries: [{name: x, promql: up, step: 60s, windows: [10m, 610s, 1h]}]",
            "query 'x': windows ['10m', '610s', '1h'] are not distinct at a step of 60s",
        ),
        (
            "queries: [{name: x, promql: up, step: 5s, lookback: 5m, windows: [30s, 1m, 3m]}]",
            "query 'x': lookback 300s must hold the longest window (180s)",
        ),
        ("bogus_key: 1", "AIOPS_CONFIG: "),
        ("queries: [", "AIOPS_CONFIG: "),
    ],
)
def test_bad_yaml(tmp_path, monkeypatch, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("AIOPS_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as info:
        resolve_catalogue(load_settings())
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AIOPS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="AIOPS_CONFIG: file not found"):
        load_settings()


def test_cli_bad_config_is_one_line_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["AIOPS_Z_THRESH"] = "banana"
    proc = subprocess.run(
        [sys.executable, "-m", "aiops", "detect", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "aiops: config error: AIOPS_Z_THRESH: Input should be a valid number, unable"
        " to parse string as a number (got 'banana')"
    ]
    assert "Traceback" not in proc.stderr


def test_the_config_override_reads_its_file(tmp_path, monkeypatch):
    """``--config`` (an override, not the environment) loads the YAML file too."""

    monkeypatch.delenv("AIOPS_CONFIG", raising=False)
    monkeypatch.delenv("AIOPS_METRICS", raising=False)
    path = tmp_path / "aiops.yaml"
    path.write_text("AIOPS_Z_THRESH: 4.5\nqueries:\n  - name: only_this\n    promql: up\n")
    s = load_settings(config=path)
    assert s.z_thresh == 4.5
    assert [q.name for q in resolve_catalogue(s)] == ["only_this"]


def test_query_windows_set_the_detector_windows(tmp_path, monkeypatch):
    """``windows:`` replaces 5m/15m/1h: the features, the verdict and the gauges' labels."""
    import numpy as np

    from detector.pipeline import detect_batch, feature_spec
    from detector.scoring import BaselineModelProvider
    from detector.source import SeriesBatch

    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(
        "queries:\n"
        "  - {name: fast, promql: up, direction: up, step: 5s, lookback: 1h,"
        " windows: [30s, 1m, 3m]}\n"
    )
    monkeypatch.setenv("AIOPS_CONFIG", str(cfg))
    s = load_settings()
    (q,) = resolve_catalogue(s)
    spec = feature_spec(q, s, 5.0)
    assert spec.window_points == {"30s": 6, "1m": 12, "3m": 36}
    assert spec.baseline == 3600 - 180  # the lookback before the longest window
    default = feature_spec(DEFAULT_QUERIES[0], s, 60.0)
    assert default.window_points == {"5m": 5, "15m": 15, "1h": 60}

    # an hour of noise at 5 s steps, then the level triples for the last 40 seconds
    rng = np.random.default_rng(3)
    values = 1.0 + 0.05 * rng.standard_normal((1, 721))
    values[0, -8:] += 2.0
    batch = SeriesBatch("fast", 1_000_000.0, 5.0, [{"app": "a"}], values)
    (r,) = detect_batch(batch, q, s, BaselineModelProvider(), now=batch.end)
    assert r.status == "ok" and r.anomalous, r.as_dict()
    assert set(r.zscores) == {"30s", "1m", "3m"}
    assert "level_shift" in {x.reason for x in r.reasons}
    # the default windows need an hour plus a baseline: this hour is still warming up
    slow = q.model_copy(update={"windows": None})
    (r,) = detect_batch(batch, slow, s, BaselineModelProvider(), now=batch.end)
    assert r.status == "warming_up" and not r.anomalous
