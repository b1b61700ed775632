"""The queries of the Grafana dashboards in ``dashboards/``, ready to run outside Grafana.

``promql_targets(path)`` gives every PromQL target of a dashboard with its template
variables replaced by match-everything regexes (``$metric`` → ``.*``) and Grafana's
interval variables by fixed durations (``$__rate_interval`` → ``5m``), so the
expressions can go to promtool or to a real Prometheus as they are.

``sql_targets(path, dialect)`` gives every SQL target with the Grafana macros
expanded to plain SQL (``$__unixEpochFilter(ts)`` → ``ts BETWEEN 0 AND 9999999999``,
``$__unixEpochGroup(ts, $__interval)`` → ``floor(ts/60)*60``). For ``"sqlite"`` it
leaves out the queries that use PostgreSQL-only SQL (see :data:`POSTGRESQL_ONLY`):
the audit dashboard's datasource is PostgreSQL, but whatever can stay portable is
checked on SQLite too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "dashboards"

PROMETHEUS = "prometheus"
POSTGRESQL = "grafana-postgresql-datasource"
SQL_DIALECTS = ("postgresql", "sqlite")

#: Values given to the dashboards' own template variables in PromQL (all of them).
PROMQL_VARIABLES = {"metric": ".*", "namespace": ".*", "app": ".*"}
#: Values given to Grafana's interval variables in PromQL.
PROMQL_BUILTINS = {"__rate_interval": "5m", "__interval": "5m", "__range": "1h"}

#: Grafana's built-in variables and SQL macros: used without being in templating.list.
GRAFANA_BUILTINS = frozenset(
    {
        "__interval",
        "__interval_ms",
        "__rate_interval",
        "__rate_interval_ms",
        "__range",
        "__range_s",
        "__range_ms",
        "__from",
        "__to",
        "__dashboard",
        "__org",
        "__user",
        "__name",
        "__time",
        "__timeEpoch",
        "__timeFilter",
        "__timeFrom",
        "__timeTo",
        "__timeGroup",
        "__timeGroupAlias",
        "__unixEpochFilter",
        "__unixEpochFrom",
        "__unixEpochTo",
        "__unixEpochGroup",
        "__unixEpochGroupAlias",
        "__unixEpochNanoFilter",
        "__unixEpochNanoFrom",
        "__unixEpochNanoTo",
    }
)

#: ``${name}``, ``${name:format}``, ``$name`` and the deprecated ``[[name]]``.
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w-]+)?\]\]")

#: The time range SQL macros are expanded to: everything ever written.
SQL_FROM, SQL_TO = 0, 9_999_999_999
#: Seconds of ``$__interval`` in ``$__unixEpochGroup(col, $__interval)``.
SQL_INTERVAL_SECONDS = 60
_SQL_MACRO = re.compile(r"\$__(\w+)\(([^()]*)\)")
_DURATION = re.compile(r"^'?(\d+)(s|m|h|d)'?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: SQL that only PostgreSQL runs: such targets are left out for SQLite.
POSTGRESQL_ONLY = re.compile(
    r"\bto_timestamp\s*\(|\bextract\s*\(|\bnow\s*\(\s*\)|::|\bdate_trunc\s*\(|\bilike\b",
    re.IGNORECASE,
)


def dashboard_paths() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query target of every panel, and of every annotation
    (as a panel titled ``annotation: <name>``)."""
    for p in panels(dashboard):
        for t in p.get("targets", []):
            yield p, t
    for a in dashboard.get("annotations", {}).get("list", []):
        if isinstance(a.get("target"), dict):
            yield (
                {"title": f"annotation: {a['name']}", "datasource": a.get("datasource")},
                a["target"],
            )


def datasource_type(panel: dict[str, Any], target: dict[str, Any]) -> str | None:
    """The plugin type a target queries: its own datasource, else its panel's."""
    for ds in (target.get("datasource"), panel.get("datasource")):
        if isinstance(ds, dict) and ds.get("type"):
            return str(ds["type"])
    return None


def variables_used(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}


def _substitute(text: str, values: dict[str, str], what: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name not in values:
            raise ValueError(f"{what}: no value for variable ${name} in {text!r}")
        return values[name]

    return VARIABLE.sub(repl, text)


def substitute_promql(expr: str) -> str:
    """``expr`` with every variable replaced; an unknown variable raises ValueError."""
    return _substitute(expr, {**PROMQL_VARIABLES, **PROMQL_BUILTINS}, "PromQL")


def _interval_seconds(arg: str) -> int:
    arg = arg.strip()
    if arg in ("$__interval", "${__interval}", "$__rate_interval"):
        return SQL_INTERVAL_SECONDS
    m = _DURATION.match(arg)
    if not m:
        raise ValueError(f"SQL: cannot read the interval {arg!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def expand_sql(sql: str) -> str:
    """``sql`` with the Grafana macros expanded to plain SQL; anything unknown raises."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "unixEpochFilter" and len(args) == 1:
            return f"{args[0]} BETWEEN {SQL_FROM} AND {SQL_TO}"
        if name in ("unixEpochGroup", "unixEpochGroupAlias") and len(args) in (2, 3):
            group = f"floor({args[0]}/{_interval_seconds(args[1])})*{_interval_seconds(args[1])}"
            return group + (' AS "time"' if name.endswith("Alias") else "")
        if name == "timeFilter" and len(args) == 1:
            return "true"
        if name == "unixEpochFrom" and not args:
            return str(SQL_FROM)
        if name == "unixEpochTo" and not args:
            return str(SQL_TO)
        raise ValueError(f"SQL: no expansion for the macro {m.group(0)!r}")

    expanded = _SQL_MACRO.sub(repl, sql)
    if "$" in expanded or "[[" in expanded:
        raise ValueError(f"SQL: a variable or macro is left after expansion: {expanded!r}")
    return expanded


def postgresql_only(sql: str) -> bool:
    return bool(POSTGRESQL_ONLY.search(sql))


def promql_targets(path: Path | str) -> list[tuple[str, str]]:
    """(panel title, runnable PromQL) for every Prometheus target of the dashboard."""
    out = []
    for p, t in targets(load(path)):
        if datasource_type(p, t) == PROMETHEUS and t.get("expr"):
            out.append((p["title"], substitute_promql(t["expr"])))
    return out


def sql_targets(path: Path | str, dialect: str) -> list[tuple[str, str]]:
    """(panel title, plain SQL) for every PostgreSQL target; on SQLite only the portable ones."""
    if dialect not in SQL_DIALECTS:
        raise ValueError(f"dialect must be one of {SQL_DIALECTS}, not {dialect!r}")
    out = []
    for p, t in targets(load(path)):
        if datasource_type(p, t) == POSTGRESQL and t.get("rawSql"):
            sql = expand_sql(t["rawSql"])
            if dialect == "sqlite" and postgresql_only(sql):
                continue
            out.append((p["title"], sql))
    return out


def variable_selectors(path: Path | str) -> list[tuple[str, str]]:
    """(variable name, PromQL) for the series selector of every ``label_values`` variable."""
    out = []
    for v in load(path).get("templating", {}).get("list", []):
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", query)
        if v.get("type") == "query" and m:
            out.append((v["name"], substitute_promql(m.group(1))))
    return out
