"""Every command reads Prometheus through one ``PrometheusSource.from_settings``."""

from __future__ import annotations

from aiops.core.settings import load_settings
from detector.source import PrometheusSource


def test_the_source_takes_every_prometheus_setting():
    s = load_settings(
        metrics=None,
        config=None,
        prom_url="http://prom.example:9090",
        prom_token="t0ken",
        prom_timeout_seconds=7.0,
        prom_retries=4,
        prom_gzip=True,
    )
    src = PrometheusSource.from_settings(s)
    assert src.url == "http://prom.example:9090"
    assert (src.timeout, src.retries) == (7.0, 4)
    assert src._client.headers["Authorization"] == "Bearer t0ken"
    assert src._client.headers["Accept-Encoding"] == "gzip"
    # history reads (the retrain) wait at least their floor
    assert PrometheusSource.from_settings(s, min_timeout=30.0).timeout == 30.0
    plain = PrometheusSource.from_settings(load_settings(metrics=None, config=None))
    assert "Authorization" not in plain._client.headers
    assert plain._client.headers["Accept-Encoding"] == "identity"
