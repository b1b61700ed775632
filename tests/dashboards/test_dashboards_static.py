"""Static checks of the Grafana dashboards and their provisioning, without a Grafana.

Every ``dashboards/*.json``: valid JSON with a unique uid and unique panel ids; every
data source reached through a ``datasource`` template variable of the right type
(never a fixed uid); every ``$variable`` defined; every PromQL expression parsed by
promtool; every metric name one the detector or the webhook exports; every SQL
query run against the migrated schema on PostgreSQL, with known rows, and on SQLite
where it is portable. The PostgreSQL-only queries (left out on SQLite) are listed in
:data:`POSTGRESQL_ONLY_PANELS`: ``to_timestamp``, ``::text`` and
``extract(epoch from now())`` have no SQLite spelling.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from aiops.core.db import make_engine
from aiops.core.settings import load_settings
from detector.exporter import AnomalyCollector, DetectorMetrics, IncidentCollector
from feature_store import tables
from runbooks.guards import make_guards
from runbooks.metrics import FeedbackCollector, RunbookMetrics, StateCollector
from sql.migrate import migrate
from tests.conftest import require_binary
from tests.dashboards import queries as q

PROMTOOL = "/usr/bin/promtool"
PATHS = q.dashboard_paths()
IDS = [p.name for p in PATHS]
EXPECTED = {
    "aiops-xai.json": "aiops-xai",
    "runbooks-audit.json": "runbooks-audit",
    "runbooks-webhook.json": "runbooks-webhook",
}
#: (dashboard file, panel title) of the SQL targets only PostgreSQL can run.
POSTGRESQL_ONLY_PANELS = {
    ("runbooks-audit.json", "Pending approvals"),
    ("runbooks-audit.json", "Last 200 audit rows"),
}
PROVISIONING = q.DASHBOARD_DIR / "provisioning"
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
RULES_FILE = q.DASHBOARD_DIR / "rules" / "aiops.rules.yml"
#: The dashboards with Prometheus targets (found without substituting anything).
PROMQL_PATHS = [
    p for p in PATHS if any(q.datasource_type(*pt) == q.PROMETHEUS for pt in q.targets(q.load(p)))
]
_FIXED_UID_OK = re.compile(r"^(?:\$\{(\w+)\}|\$(\w+))$")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(json path, value) of every node under ``node``."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return dashboard.get("templating", {}).get("list", [])


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on one recording rule per expression."""
    rules = [{"record": f"dashboard:target_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [require_binary(PROMTOOL), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- structure -------------------------------------------------------------------------------


def test_the_three_dashboards_exist_with_their_uids() -> None:
    found = {p.name: q.load(p).get("uid") for p in PATHS}
    assert {k: found.get(k) for k in EXPECTED} == EXPECTED


def test_uids_are_unique_across_dashboards() -> None:
    uids = Counter(q.load(p).get("uid") for p in PATHS)
    assert all(uids), "a dashboard has no uid"
    assert [u for u, n in uids.items() if n > 1] == []


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_dashboard_is_valid_json_with_unique_panel_ids(path: Path) -> None:
    d = q.load(path)  # raises on invalid JSON
    assert d["schemaVersion"] == 39
    assert d["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    ids = [p.get("id") for p in q.panels(d)]
    assert ids and all(isinstance(i, int) for i in ids)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert len({p["title"] for p in q.panels(d) if p["type"] != "row"}) == len(
        [p for p in q.panels(d) if p["type"] != "row"]
    ), "panel titles identify targets in queries.py: keep them unique"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in q.load(path)["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


# -- data sources and variables --------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_every_datasource_is_a_template_variable_of_its_type(path: Path) -> None:
    d = q.load(path)
    ds_vars = {v["name"]: v["query"] for v in variables(d) if v["type"] == "datasource"}
    assert ds_vars, "no datasource variable"
    seen = 0
    for where, node in walk(d):
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key.lower().endswith("uid") and where != "":  # the dashboard's own uid
                assert isinstance(value, str) and _FIXED_UID_OK.match(value), (
                    f"{where}.{key} = {value!r}: a fixed uid; use ${{datasource}}"
                )
        ds = node.get("datasource")
        if "datasource" in node and not (where.startswith(".templating") and ds is None):
            assert isinstance(ds, dict), f"{where}.datasource = {ds!r}: name it by variable"
            m = _FIXED_UID_OK.match(str(ds.get("uid")))
            assert m, f"{where}.datasource.uid = {ds.get('uid')!r} is not a variable"
            name = m.group(1) or m.group(2)
            assert name in ds_vars, f"{where}: ${name} is not a datasource variable"
            assert ds.get("type") == ds_vars[name], f"{where}: type differs from ${name}'s"
            seen += 1
    for p in q.panels(d):
        if p["type"] == "row":
            continue
        assert isinstance(p.get("datasource"), dict), f"panel {p['title']!r}: no datasource"
        assert p.get("targets"), f"panel {p['title']!r}: no targets"
        for t in p["targets"]:
            assert isinstance(t.get("datasource"), dict), f"{p['title']} {t['refId']}"
    assert seen >= 2


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_every_variable_used_is_defined_or_built_in(path: Path) -> None:
    d = q.load(path)
    defined = [v["name"] for v in variables(d)]
    assert len(defined) == len(set(defined))
    undefined = set()
    for where, node in walk(d):
        if isinstance(node, str):
            undefined |= {
                (where, n)
                for n in q.variables_used(node)
                if n not in defined and n not in q.GRAFANA_BUILTINS
            }
    assert undefined == set()
    # a chained variable may only use the variables before it
    for i, v in enumerate(variables(d)):
        used = set()
        for _, node in walk(v):
            if isinstance(node, str):
                used |= q.variables_used(node) - q.GRAFANA_BUILTINS
        assert used <= set(defined[:i]), f"${v['name']} uses {used - set(defined[:i])}"


def test_xai_variables_filter_every_anomaly_query() -> None:
    d = q.load(q.DASHBOARD_DIR / "aiops-xai.json")
    by_name = {v["name"]: v for v in variables(d)}
    assert by_name["datasource"]["type"] == "datasource"
    assert by_name["datasource"]["query"] == q.PROMETHEUS
    assert "label_values(aiops_anomaly_current, metric)" in str(by_name["metric"]["query"])
    for name in ("metric", "namespace", "app"):
        assert by_name[name]["multi"] and by_name[name]["includeAll"], name
        assert by_name[name]["allValue"] == ".*", f"${name}: All must match unset labels too"
    assert "$metric" in str(by_name["namespace"]["query"])
    assert {"$metric", "$namespace"} <= set(re.findall(r"\$\w+", str(by_name["app"]["query"])))
    scoped = 0
    for p, t in q.targets(d):
        if re.search(r"aiops_(anomaly|model)_", t.get("expr", "")):
            for name in ("metric", "namespace", "app"):
                assert f'{name}=~"${name}"' in t["expr"], f"{p['title']}: not filtered by ${name}"
            scoped += 1
    assert scoped >= 8


# -- PromQL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROMQL_PATHS, ids=[p.name for p in PROMQL_PATHS])
def test_every_promql_target_parses_with_promtool(path: Path, tmp_path: Path) -> None:
    exprs = [e for _, e in q.promql_targets(path)] + [e for _, e in q.variable_selectors(path)]
    assert all("$" not in e for e in exprs)
    done = promtool_check(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    done = promtool_check(["sum by (le) (rate(x[5m])", "up"], tmp_path)
    assert done.returncode != 0
    assert '"dashboard:target_0": could not parse expression' in done.stderr


def test_promql_targets_substitute_every_variable() -> None:
    got = dict(q.promql_targets(q.DASHBOARD_DIR / "aiops-xai.json"))
    assert got["Anomaly score"] == ('aiops_anomaly_score{metric=~".*",namespace=~".*",app=~".*"}')
    assert "[5m]" in got["Cycles by result"]
    with pytest.raises(ValueError, match=r"\$nope"):
        q.substitute_promql('up{job="$nope"}')


def exported_series_names(tmp_path: Path) -> set[str]:
    """Every series name the detector's and the webhook's /metrics can show."""
    registry = CollectorRegistry()
    AnomalyCollector(registry)
    IncidentCollector(registry)
    DetectorMetrics(registry)
    url = f"sqlite:///{tmp_path}/names.db"
    settings = load_settings(database_url=url)
    RunbookMetrics(registry, settings)
    engine = make_engine(url)
    migrate(engine)
    registry.register(StateCollector(engine, settings, make_guards(None)))
    registry.register(FeedbackCollector(engine))
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    engine.dispose()
    return names


def test_every_metric_name_in_the_dashboards_is_exported(tmp_path: Path) -> None:
    names = exported_series_names(tmp_path)
    assert {"runbooks_circuit_open", "aiops_anomaly_zscore", "runbooks_requests_total"} <= names
    if RULES_FILE.exists():  # recording rules of dashboards/rules may be used too
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    unknown = set()
    for path in PATHS:
        exprs = q.promql_targets(path) + q.variable_selectors(path)
        for title, expr in exprs:
            for name in re.findall(r"\b((?:aiops|runbooks)[a-z0-9_:]*)", expr):
                if name not in names:
                    unknown.add((path.name, title, name))
    assert unknown == set()


# -- SQL -------------------------------------------------------------------------------------


def seed(engine: Any) -> float:
    """Known audit, approval and incident rows; returns 'now'."""
    now = time.time()
    kinds = [
        "incident_opened",
        "policy_match",
        "executed",
        "executed",
        "dry_run",
        "failed",
        "verified",
        "skipped_cooldown",
        "skipped_cooldown",
        "skipped_circuit",
        "skipped_disabled",
        "skipped_guard_unavailable",
        "no_policy",
    ]
    blank = {c.name: None for c in tables.audit.columns if c.name != "id"}
    audit = [  # executemany takes the columns of the first row: give every row all of them
        {**blank, "ts": now - 7200 + i, "kind": "request", "actor": "webhook", "app": "checkout"}
        for i in range(200)
    ]
    audit += [
        {
            **blank,
            "ts": now - 60 + i,
            "kind": kind,
            "incident_id": "inc-1",
            "metric": "latency_p99",
            "namespace": "shop",
            "app": "checkout",
            "action": "scale_up",
            "result": kind,
            "actor": "webhook",
            "details": {"why": f"row {i}"},
        }
        for i, kind in enumerate(kinds)
    ]
    approval = {
        "app": "checkout",
        "namespace": "shop",
        "target": "deployment/checkout",
        "action": "scale_up",
        "params": {"delta": 1},
        "request": {"metric": "latency_p99"},
        "created_at": now - 100,
    }
    approvals = [
        {**approval, "id": "a-pending", "state": "pending", "expires_at": now + 3600},
        {**approval, "id": "a-lapsed", "state": "pending", "expires_at": now - 10},
        {**approval, "id": "a-approved", "state": "approved", "expires_at": now + 3600},
    ]
    incident = {"events": 3, "actions": 1, "subject": "s", "escalated": 0, "self_healed": 0}
    incidents = [  # executemany takes the columns of the first row: give them all
        {**incident, "id": "inc-1", "status": "open", "opened_at": now - 60, "resolved_at": None},
        {
            **incident,
            "id": "inc-2",
            "status": "resolved",
            "opened_at": now - 600,
            "resolved_at": now - 300,
            "self_healed": 1,
        },
        {
            **incident,
            "id": "inc-3",
            "status": "resolved",
            "opened_at": now - 1000,
            "resolved_at": now - 100,
            "escalated": 1,
        },
    ]
    change = {"kind": "deploy", "source": "webhook", "service": "shop.payments"}
    changes = [
        {**change, "id": "ci-1", "at": now - 120, "description": "v2.4.1", "received_at": now}
    ]
    with engine.begin() as conn:
        conn.execute(insert(tables.audit), audit)
        conn.execute(insert(tables.approvals), approvals)
        conn.execute(insert(tables.incidents), incidents)
        conn.execute(insert(tables.changes), changes)
    return now


def run_sql(engine: Any, dialect: str) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Rows of every SQL target of every dashboard, by (file, panel title)."""
    out = {}
    with engine.connect() as conn:
        for path in PATHS:
            for title, sql in q.sql_targets(path, dialect):
                out[(path.name, title)] = [tuple(r) for r in conn.exec_driver_sql(sql)]
    return out


def check_known_rows(rows: dict[tuple[str, str], list[tuple[Any, ...]]]) -> None:
    def panel(title: str) -> list[tuple[Any, ...]]:
        return rows[("runbooks-audit.json", title)]

    actions: Counter[str] = Counter()
    for t, kind, n in panel("Actions by result"):
        assert float(t) % 60 == 0, "time is not grouped by the interval"
        actions[kind] += n
    assert actions == {"executed": 2, "dry_run": 1, "failed": 1, "verified": 1}
    assert dict(panel("Skipped by guard")) == {
        "skipped_cooldown": 2,
        "skipped_circuit": 1,
        "skipped_disabled": 1,
        "skipped_guard_unavailable": 1,
    }
    assert panel("Open incidents") == [(1,)]
    (deploy,) = rows[("aiops-xai.json", "annotation: Deploys and configuration changes")]
    assert deploy[1] == "shop.payments: deploy (v2.4.1)" and deploy[2] == "shop.payments"
    assert float(panel("Self-healed share")[0][0]) == pytest.approx(0.5)
    assert float(panel("Mean time to resolve")[0][0]) == pytest.approx(600, abs=1e-3)
    assert dict(panel("Incidents by outcome")) == {"open": 1, "self-healed": 1, "escalated": 1}


def test_sql_targets_run_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        migrate(engine)
        seed(engine)
        rows = run_sql(engine, "postgresql")
    finally:
        engine.dispose()
    assert {k for k in rows if k[0] == "runbooks-audit.json"} >= POSTGRESQL_ONLY_PANELS
    check_known_rows(rows)
    assert rows[("runbooks-audit.json", "Pending approvals")] == [(1,)]
    last = rows[("runbooks-audit.json", "Last 200 audit rows")]
    assert len(last) == 200
    assert last[0][1] == "no_policy" and last[1][1] == "skipped_guard_unavailable"
    assert last[0][0].timestamp() > last[-1][0].timestamp()  # a timestamp, newest first
    assert '"why"' in last[0][-1]


def test_portable_sql_targets_run_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    try:
        migrate(engine)
        seed(engine)
        rows = run_sql(engine, "sqlite")
    finally:
        engine.dispose()
    everything = {(p.name, t) for p in PATHS for t, _ in q.sql_targets(p, "postgresql")}
    assert everything - set(rows) == POSTGRESQL_ONLY_PANELS
    check_known_rows(rows)


def test_sql_macros_expand_to_plain_sql() -> None:
    sql = "SELECT $__unixEpochGroup(ts, $__interval) AS t FROM x WHERE $__unixEpochFilter(ts)"
    assert q.expand_sql(sql) == (
        "SELECT floor(ts/60)*60 AS t FROM x WHERE ts BETWEEN 0 AND 9999999999"
    )
    assert q.expand_sql("$__unixEpochGroupAlias(ts, '5m')") == 'floor(ts/300)*300 AS "time"'
    assert q.expand_sql("WHERE $__timeFilter(created)") == "WHERE true"
    with pytest.raises(ValueError, match="timeGroup"):
        q.expand_sql("SELECT $__timeGroup(t, '1m')")
    with pytest.raises(ValueError, match="left after expansion"):
        q.expand_sql("SELECT * FROM x WHERE app = '$app'")
    with pytest.raises(ValueError, match="dialect"):
        q.sql_targets(PATHS[0], "mysql")


# -- provisioning ----------------------------------------------------------------------------


def test_datasource_provisioning_serves_every_datasource_variable() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "aiops.yml").read_text())
    assert doc["apiVersion"] == 1
    by_type = {ds["type"]: ds for ds in doc["datasources"]}
    prom, pg = by_type[q.PROMETHEUS], by_type[q.POSTGRESQL]
    assert prom["url"] == "http://prometheus:9090" and prom["access"] == "proxy"
    assert pg["url"] == "postgres:5432" and pg["user"] == "aiops"
    assert pg["jsonData"]["database"] == "aiops"
    assert pg["secureJsonData"]["password"] in ("$AIOPS_DB_PASSWORD", "${AIOPS_DB_PASSWORD}")
    assert "password" not in pg and "password" not in pg["jsonData"]
    assert sum(1 for ds in doc["datasources"] if ds.get("isDefault")) == 1
    wanted = {v["query"] for p in PATHS for v in variables(q.load(p)) if v["type"] == "datasource"}
    assert wanted == {q.PROMETHEUS, q.POSTGRESQL}
    assert wanted <= set(by_type)


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "aiops.yml").read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARDS
    # the provider loads *.json under that folder: the dashboards sit at its top
    assert {p.parent for p in PATHS} == {q.DASHBOARD_DIR}


def test_compose_mounts_the_dashboards_where_the_provider_looks() -> None:
    composes = [
        p
        for pattern in ("*compose*.y*ml", "*/*compose*.y*ml")
        for p in q.REPO.glob(pattern)
        if ".venv" not in p.parts
    ]
    assert composes, "docker-compose.yml is missing"
    mounts: dict[str, list[Path]] = {GRAFANA_DASHBOARDS: [], GRAFANA_PROVISIONING: []}
    for path in composes:
        for service in (yaml.safe_load(path.read_text()) or {}).get("services", {}).values():
            for vol in service.get("volumes", []) or []:
                spec = vol if isinstance(vol, str) else f"{vol.get('source')}:{vol.get('target')}"
                source, _, target = spec.partition(":")
                target = target.split(":")[0]
                if target in mounts:
                    mounts[target].append((path.parent / source).resolve())
    assert q.DASHBOARD_DIR.resolve() in mounts[GRAFANA_DASHBOARDS]
    assert PROVISIONING.resolve() in mounts[GRAFANA_PROVISIONING]
