"""Bad input: the webhook's OpenAPI fuzzed, oversized and deeply nested bodies, and the
feature function and explainers fed any series at all.

- Schemathesis generates valid and invalid requests for every operation of the
  webhook's ``/openapi.json`` and runs all its checks on every answer: no 5xx, every
  status and body as documented, invalid data refused, valid data accepted, and
  declared authentication enforced (``ignored_auth``). The app runs in-process
  (ASGI) on a real SQLite database with the policy's command action live.
- Bodies over ``RUNBOOK_MAX_BODY_BYTES`` get 413 before they are read, JSON nested
  deeper than 32 levels 422, both within a fraction of a second.
- Hypothesis feeds ``compute_features`` and the explainers series of any length
  with NaN, ±inf and extreme values; the live path gives every series a score in
  0..1 (an undefined feature, such as the percent change of a constant-zero series,
  is neutral) or says it is warming up, never a NaN score or an exception.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prometheus_client import CollectorRegistry

from aiops.core.settings import load_settings
from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_event, slack_signature
from detector.catalogue import Query
from detector.explain import REASONS, any_fired, default_explainers, evaluate, reasons_at
from detector.exporter import AnomalyCollector
from detector.features import FeatureSpec, compute_features
from detector.pipeline import detect_batch, feature_spec
from detector.result import SeriesResult
from detector.scoring import BaselineModelProvider
from detector.source import SeriesBatch
from tests.adversarial.conftest import served
from tests.runbooks.conftest import READ_TOKEN, SECRET, TOKEN, alerts, anomaly

# -- schemathesis ---------------------------------------------------------------------------

#: what the fuzzer sends as credentials; the proxy below turns it into a real signature
PLACEHOLDER = "sign-this-request"
SLACK_SECRET = "slack-signing-secret"


class SigningProxy:
    """Stands in for the detector and Slack in front of the app: a request whose signature
    header is the placeholder gets a real signature over its raw body (and a fresh
    timestamp). Requests without it, or with any other value, pass unchanged, so the
    fuzzer's "no auth" and "invalid auth" probes meet the real verification."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        placeholder = PLACEHOLDER.encode()
        kind = next(
            (
                name
                for name in (SIGNATURE_HEADER.lower().encode(), b"x-slack-signature")
                if headers.get(name) == placeholder
            ),
            None,
        )
        if kind is None:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        stamp = str(int(time.time()))
        if kind == b"x-slack-signature":
            extra = [
                (b"x-slack-signature", slack_signature(SLACK_SECRET, stamp, body).encode()),
                (b"x-slack-request-timestamp", stamp.encode()),
            ]
        else:
            extra = [
                (kind, sign_event(SECRET, stamp, body).encode()),
                (TIMESTAMP_HEADER.lower().encode(), stamp.encode()),
            ]
        drop = {name for name, _ in extra}
        kept = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body}
            return await receive()

        await self.app({**scope, "headers": kept + extra}, replay, send)


#: examples per operation and phase (about 5 s of fuzzing at 20)
EXAMPLES = 20

CONFIG = f"""
[checks]
enabled = true

[generation]
mode = "all"
max-examples = {{examples}}

[auth.openapi.detectorSignature]
api_key = "{PLACEHOLDER}"

[auth.openapi.slackSignature]
api_key = "{PLACEHOLDER}"

[auth.openapi.alertmanagerBearer]
bearer = "{TOKEN}"

[auth.openapi.readBearer]
bearer = "{READ_TOKEN}"

# Slack's form field holds a JSON document the form schema cannot describe: a signed
# payload that is not Slack's block_actions JSON is a 400 (tests/runbooks/test_slack.py)
# a real held approval, so /approve and /reject fuzz tokens against it (not a 404)
[parameters]
"query.id" = "{{approval}}"

[[operations]]
include-path = "/slack/interactive"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403"]
"""


@pytest.mark.timeout(400)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(make_hook, tmp_path):
    """``st run`` with every check and positive and negative data against the webhook."""
    hook = make_hook(
        rate_limit=100000.0,
        cooldown_seconds=0,
        circuit_max_hourly=100000,
        circuit_max_daily=100000,
        max_actions_per_window=100000,
        slack_signing_secret=SLACK_SECRET,
        risk="high",
    )
    held = hook.post_event(anomaly("held-for-the-fuzzer")).json()
    assert held["decision"] == "approval_pending"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(examples=EXAMPLES, approval=held["approval_id"]))
    st = Path(sys.executable).with_name("st")
    with served(SigningProxy(hook.app)) as url:
        proc = subprocess.run(
            [
                str(st),
                "--config-file",
                str(config),
                "--no-color",
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--mode",
                "all",
                "--seed",
                "8",
                # an infinite Server-Sent Events stream has no answer to check
                "--exclude-path",
                "/events",
            ],
            capture_output=True,
            text=True,
            timeout=360,
            cwd=tmp_path,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert summary, out[-6000:]
    assert summary[1] == summary[2] and int(summary[1]) > 300, summary[0]
    assert "Failures:" not in out.rsplit("SUMMARY", 1)[-1], out[-6000:]
    kinds = hook.kinds()
    # the run reached the remediation pipeline: signed, valid events were decided ...
    assert kinds.count("request") > 10
    # ... unsigned or forged ones were refused, and so were forged approval tokens
    refused = [r["details"].get("route") for r in hook.audit(kind="unauthorized")]
    assert {"/anomalies", "/alertmanager", "/slack/interactive"} <= set(refused)
    assert any("approval" in r["details"] for r in hook.audit(kind="unauthorized"))
    assert hook.runs() == []  # the held action was never approved by a fuzzed token


def test_the_fuzzed_schema_documents_bodies_and_authentication(make_hook):
    """The OpenAPI the fuzzer works from declares what the inputs really need."""
    hook = make_hook()
    spec = hook.client.get("/openapi.json").json()
    post = spec["paths"]["/anomalies"]["post"]
    assert post["security"] == [{"detectorSignature": []}]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AnomalyEvent"
    )
    assert spec["paths"]["/alertmanager"]["post"]["security"] == [{"alertmanagerBearer": []}]
    assert set(post["responses"]) >= {"200", "401", "413", "422", "429", "503"}
    labels = spec["components"]["schemas"]["Alert"]["properties"]["labels"]
    assert labels["required"] == ["alertname"]
    without = make_hook(alertmanager_token=None).client.get("/openapi.json").json()
    assert without["paths"]["/alertmanager"]["post"]["security"] == []


# -- oversized and deeply nested bodies -------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


def _signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign_event(SECRET, stamp, body)}


@pytest.mark.parametrize("route", ["/anomalies", "/alertmanager", "/slack/interactive"])
def test_a_10_mb_body_is_refused_413_before_it_is_read(make_hook, route):
    hook = make_hook()
    body = b'{"pad": "' + b"x" * TEN_MB + b'"}'
    headers = {"Authorization": f"Bearer {TOKEN}", **_signed(body)}
    t0 = time.perf_counter()
    r = hook.client.post(route, content=body, headers=headers)
    took = time.perf_counter() - t0
    assert r.status_code == 413, r.text
    assert "larger than 1048576 bytes" in r.json()["error"]
    assert took < 1.0, took
    assert hook.runs() == []
    assert hook.kinds() == []  # refused before anything was parsed or recorded


def test_a_chunked_body_without_length_is_cut_at_the_limit(make_hook):
    """No Content-Length (chunked upload) over a real socket: refused once the limit is
    crossed, without waiting for the rest of the 10 MB."""
    hook = make_hook(max_body_bytes=64 * 1024)
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(TEN_MB // 65536):
            sent += 65536
            yield b"[" * 65536

    with served(hook.app) as url:
        t0 = time.perf_counter()
        try:
            r = httpx.post(
                f"{url}/alertmanager",
                content=chunks(),
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            status, error = r.status_code, r.json()["error"]
        except httpx.TransportError as exc:  # the server closed while we were still sending
            status, error = None, str(exc)
        took = time.perf_counter() - t0
    assert status in (413, None), status
    if status == 413:
        assert "larger than 65536 bytes" in error
    assert sent < TEN_MB // 2, sent  # the rest of the body was never sent
    assert took < 2.0, took
    assert hook.kinds() == []


def test_a_body_at_the_limit_still_goes_through(make_hook):
    hook = make_hook(max_body_bytes=4096)
    event = anomaly("at-limit")
    event["pad"] = ""
    size = len(json.dumps(event).encode())
    event["pad"] = "p" * (4096 - size)
    body = json.dumps(event).encode()
    assert len(body) == 4096
    r = hook.client.post("/anomalies", content=body, headers=_signed(body))
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "executed"


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
def test_deeply_nested_json_is_refused_422_quickly(make_hook, depth):
    hook = make_hook()
    nested = b"[" * depth + b"]" * depth
    payload = alerts()
    payload["alerts"][0]["annotations"] = {"summary": "x"}
    am_body = json.dumps(payload).encode()
    am_body = am_body[:-1] + b', "extra": ' + nested + b"}"
    event_body = json.dumps(anomaly("deep"))[:-1].encode() + b', "extra": ' + nested + b"}"
    t0 = time.perf_counter()
    r1 = hook.client.post(
        "/alertmanager", content=am_body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    r2 = hook.client.post("/anomalies", content=event_body, headers=_signed(event_body))
    took = time.perf_counter() - t0
    for r in (r1, r2):
        assert r.status_code == 422, r.text
        assert "nested deeper than 32 levels" in r.json()["error"]
    assert took < 1.0, took
    assert hook.runs() == []


def test_nesting_within_the_limit_is_accepted(make_hook):
    hook = make_hook()
    event = anomaly("nested-ok")
    inner: Any = "leaf"
    for _ in range(30):  # 30 levels under the top object: 31 in all
        inner = [inner]
    event["extra"] = inner
    body = json.dumps(event).encode()
    r = hook.client.post("/anomalies", content=body, headers=_signed(body))
    assert r.status_code == 200, r.text


# -- property tests: the feature function and the explainers ---------------------------------

#: a small spec (1-minute steps, 3/6/12-point windows, 30-point baseline) so that short
#: generated series cross the "ready" boundary
SPEC = FeatureSpec(step=60.0, windows=((180.0, 3), (360.0, 6), (720.0, 12)), baseline=1800.0)
SEASONAL = FeatureSpec(
    step=60.0, windows=((180.0, 3), (360.0, 6), (720.0, 12)), baseline=1800.0, season=1800.0
)

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e308, 5e-324]),
)
series = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 3), st.integers(0, 120)),
    elements=values,
)
regular = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 3), st.integers(40, 120)),
    elements=st.floats(-1e3, 1e3),
)


def _check(x: np.ndarray, spec: FeatureSpec) -> None:
    f = compute_features(x, spec)
    n, t = x.shape
    assert f.ready.shape == (n, t) and f.ready.dtype == bool
    # wherever a series is ready, its z-scores and the scale they divide by are usable
    for name in f.windows:
        assert np.isfinite(f.z[name][f.ready]).all()
    assert (f.scale[f.ready] > 0).all()
    for direction in ("up", "down", "both"):
        evidence = evaluate(
            default_explainers(z_thresh=3.0, vol_mult=2.0, pct_thresh=0.3, direction=direction),
            f,
        )
        fired = any_fired(evidence)
        assert not (fired & ~f.ready).any()  # nothing fires on a series that is not ready
        for i, j in zip(*np.nonzero(fired), strict=True):
            for reason in reasons_at(evidence, f.windows, int(i), int(j)):
                assert reason.reason in REASONS
                assert np.isfinite(reason.zscore) and np.isfinite(reason.threshold)


QUERY = Query(name="kpi", promql="x", direction="both", labels=("i",), seasonality="none")
DETECT = load_settings(metrics=None, config=None, lookback="1h", step="60s")


def _detect(x: np.ndarray) -> tuple[list[SeriesResult], CollectorRegistry]:
    """The live path: features, forest, explainers, verdicts and the exported gauges."""
    labels = [{"i": str(i)} for i in range(len(x))]
    batch = SeriesBatch(QUERY.name, 1_700_000_000.0, 60.0, labels, x)
    results = detect_batch(batch, QUERY, DETECT, BaselineModelProvider(), now=batch.end)
    registry = CollectorRegistry()
    AnomalyCollector(registry).update(QUERY.name, results)
    for r in results:
        assert r.status in ("ok", "warming_up")  # scored, or clearly not enough data yet
        labels = {"metric": QUERY.name, **r.labels}
        if r.status == "ok":
            # a finite forest score in 0..1 (an undefined feature is neutral), and a finite
            # calibrated score, at least 1 exactly while anomalous: so the gauges are there
            assert 0.0 <= r.forest_score <= 1.0, r.forest_score
            assert r.score >= 0.0 and (r.score >= 1.0) == r.anomalous, r.score
            assert registry.get_sample_value("aiops_anomaly_score", labels) == r.score
            assert all(np.isfinite(list(r.zscores.values())))
            assert all(np.isfinite(list(r.features.values())))  # the row that was scored
            assert all(np.isfinite(reason.zscore) for reason in r.reasons)
        else:
            assert not r.anomalous and not r.reasons and np.isnan(r.score)
            assert registry.get_sample_value("aiops_anomaly_score", labels) is None
    for family in registry.collect():
        for sample in family.samples:
            assert np.isfinite(sample.value), sample
    return results, registry


@st.composite
def quiet_series(draw: Any) -> np.ndarray:
    """1-3 series long enough for a forest: constant (often zero, as the error count of a
    quiet service) or noisy, maybe a burst at the end, maybe NaN/±inf holes."""
    n, t = draw(st.integers(1, 3)), draw(st.integers(120, 220))
    x = np.empty((n, t))
    for i in range(n):
        level = draw(st.sampled_from([0.0, 0.0, 1.0, -3.0, 1e6]))
        noise = draw(st.sampled_from([0.0, 0.0, 0.1, 10.0]))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        x[i] = level + noise * rng.standard_normal(t)
        burst = draw(st.integers(0, 10))
        if burst:
            x[i, -burst:] += draw(st.sampled_from([50.0, -50.0, 1e9]))
        for h in draw(st.lists(st.integers(0, t - 1), max_size=20)):
            x[i, h] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


@settings(max_examples=150, deadline=None)
@given(series)
def test_any_series_gives_finite_features_or_not_ready(x):
    _check(x, SPEC)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 200)), elements=values))
def test_the_live_path_scores_or_says_warming_up_and_exports_only_finite_values(x):
    _detect(x)


@settings(max_examples=60, deadline=None)
@given(quiet_series())
def test_constant_zero_and_holey_series_are_scored_or_warming_up_never_nan(x):
    _detect(x)


def _noisy(n: int, t: int) -> np.ndarray:
    return 100.0 + np.random.default_rng(7).standard_normal((n, t))


@pytest.mark.parametrize("others", ["zero", "noisy"])
def test_a_constant_zero_series_gets_a_finite_score_and_its_gauge(others):
    """Percent change 0/0 is undefined: neutral, not a missing score. With only zero
    series the query's forest is fitted on the neutral rows (no row is complete)."""
    x = np.zeros((3, 200)) if others == "zero" else _noisy(3, 200)
    x[0] = 0.0
    results, registry = _detect(x)
    assert len(results) == 3 and all(r.status == "ok" for r in results)
    zero = results[0]
    assert np.isfinite(zero.score) and 0.0 <= zero.score < 1.0
    assert 0.0 <= zero.forest_score <= 1.0
    assert zero.features["pct_change"] == 0.0  # neutral
    assert registry.get_sample_value("aiops_anomaly_score", {"metric": "kpi", "i": "0"}) == (
        zero.score
    )
    assert not zero.anomalous


@pytest.mark.parametrize("others", ["zero", "noisy"])
def test_a_jump_from_a_zero_baseline_is_scored_and_detected(others):
    """The jump's percent change (from 0) is undefined: the series still gets a score, its
    gauge, and the verdict. With only zero series the forest cannot split its rows and
    scores every point 0.5 give or take rounding (here below 0.5): the gate lets it
    through (``detector.verdict.SCORE_TOLERANCE``)."""
    x = np.zeros((1, 200)) if others == "zero" else _noisy(3, 200)
    x[0] = 0.0
    x[0, -3:] = 50.0
    results, registry = _detect(x)
    jump = results[0]
    assert jump.status == "ok" and np.isfinite(jump.score) and jump.score >= 1.0
    assert 0.0 <= jump.forest_score <= 1.0
    assert registry.get_sample_value("aiops_anomaly_score", {"metric": "kpi", "i": "0"}) == (
        jump.score
    )
    assert jump.anomalous and "level_shift" in {r.reason for r in jump.reasons}
    assert registry.get_sample_value("aiops_anomaly_current", {"metric": "kpi", "i": "0"}) == 1.0


def test_a_query_with_too_little_data_for_a_forest_says_warming_up():
    """Ready series (enough history for features) but fewer than 8 baseline rows in the
    whole query to fit a forest: no score can be given, so not enough data yet, and
    not anomalous, rather than "ok" without a score."""
    x = _noisy(3, 120)
    x[0, -3:] += 50.0
    spec = feature_spec(QUERY, DETECT, 60.0)
    assert compute_features(x, spec).ready[:, -1].all()  # the features are ready
    results, registry = _detect(x)
    assert [r.status for r in results] == ["warming_up"] * 3
    assert not any(r.anomalous for r in results)
    assert registry.get_sample_value("aiops_anomaly_current", {"metric": "kpi", "i": "0"}) == 0.0
    assert registry.get_sample_value("aiops_anomaly_score", {"metric": "kpi", "i": "0"}) is None


@settings(max_examples=60, deadline=None)
@given(regular, st.lists(st.integers(0, 119), max_size=30), st.sampled_from([np.nan, np.inf]))
def test_gaps_and_infinities_inside_a_regular_series(x, holes, bad):
    x = x.copy()
    for h in holes:
        x[:, h % x.shape[1]] = bad
    _check(x, SPEC)


@settings(max_examples=40, deadline=None)
@given(regular)
def test_seasonal_features_are_finite_or_not_ready(x):
    _check(np.tile(x, (1, 2)), SEASONAL)


def test_an_empty_series_is_not_ready_and_raises_nothing():
    f = compute_features(np.empty((2, 0)), SPEC)
    assert f.ready.shape == (2, 0)
    f = compute_features(np.array([np.nan]), SPEC)
    assert not f.ready.any()
