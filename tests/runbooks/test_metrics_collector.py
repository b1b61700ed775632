"""The webhook's scrape-time gauges describe themselves (prometheus_client's custom
collector protocol): registering them does not query the database, and what they describe
is what they collect."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aiops.core.db import make_engine
from aiops.core.settings import load_settings
from runbooks.guards import make_guards
from runbooks.metrics import STATE_FAMILIES, StateCollector
from sql.migrate import migrate


def collector(tmp_path: Path) -> StateCollector:
    url = f"sqlite:///{tmp_path}/m.db"
    engine = make_engine(url)
    migrate(engine)
    return StateCollector(engine, load_settings(database_url=url), make_guards(None))


def test_registering_the_collector_does_not_scrape_it(tmp_path, monkeypatch):
    c = collector(tmp_path)

    def no_scrape(self):  # type: ignore[no-untyped-def]
        raise AssertionError("collect() called at registration")

    monkeypatch.setattr(StateCollector, "collect", no_scrape)
    registry = CollectorRegistry()
    registry.register(c)  # would call collect() without describe()
    described = [f.name for f in c.describe()]
    assert described == list(STATE_FAMILIES)
    # the registry knows the names from describe(): a second one of them is refused
    second = tmp_path / "second"
    second.mkdir()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(collector(second))


def test_what_it_describes_is_what_it_collects(tmp_path):
    c = collector(tmp_path)
    assert [f.name for f in c.collect()] == [f.name for f in c.describe()]
    up = next(f for f in c.collect() if f.name == "runbooks_database_up")
    assert up.samples[0].value == 1.0
    c.engine.dispose()
