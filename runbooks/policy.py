"""Which action fixes what: ``RUNBOOK_AUTOFIX_POLICY`` and ``RUNBOOK_POLICY_FILE``.

Inline form, rules separated by ``;``::

    crashloop=restart_pods;success_rate:trend_break=rollout_restart;latency_p99:level_shift=scale_up:+1

``NAME[:REASON]=ACTION[:ARG]``: NAME is an alert name or a detector metric,
REASON optionally narrows it to one explainer reason. A rule without a reason acts
on every reason but ``spike`` (one to three points outside the expected band: the
verdict shows it, nothing is fixed for it): an anomaly whose only reason is a spike
matches only a rule that names ``spike``.

File form (YAML), keyed ``<namespace>.<app>``, ``<namespace>.*``, ``*.<app>`` and
``default``; the first key that exists for a signal's namespace and app is used
(in that order), then the inline rules::

    shop.checkout:
      - match: latency_p99          # alert name or metric
        reason: level_shift         # optional
        action: scale_up
        params: {delta: 1, max_replicas: 10}
        risk: medium                # low | medium | high (high always asks a human)
      - match: CheckoutDown
        action: command
        params: {argv: [systemctl, restart, checkout]}
    default:
      - match: "*"                  # any anomaly of an incident ...
        cause: shop.payments        # ... whose probable cause is payments (globs allowed)
        action: rollout_undo
      - match: crashloop
        action: restart_pods

A policy that cannot be used stops the start with one line: the setting, the
line of the file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from aiops.core.errors import ConfigError
from detector.explain import PASSIVE_REASONS
from runbooks.actions import ACTIONS, ActionError

RISKS = ("low", "medium", "high")


@dataclass(frozen=True)
class Rule:
    match: str
    action: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    reason: str | None = None
    #: low | medium | high (high always asks a human); None: the action's default
    risk: str | None = None
    where: str = ""  # where the rule was defined, for the audit
    #: the probable cause's service it wants (``shop.payments``, globs allowed); None: any
    cause: str | None = None

    def matches(self, name: str | list[str], reasons: list[str], cause: str | None = None) -> bool:
        names = [name] if isinstance(name, str) else name
        if self.match != "*" and self.match not in names:
            return False
        if self.cause is not None and (cause is None or not fnmatchcase(cause, self.cause)):
            return False
        if self.reason is not None:
            return self.reason in reasons
        # no reason given (an alert without one matches), or one that is not passive
        return not reasons or any(r not in PASSIVE_REASONS for r in reasons)


@dataclass
class Policy:
    scoped: dict[str, list[Rule]] = field(default_factory=dict)
    inline: list[Rule] = field(default_factory=list)

    def rules_for(self, namespace: str | None, app: str | None) -> tuple[str, list[Rule]]:
        keys = []
        if namespace and app:
            keys.append(f"{namespace}.{app}")
        if namespace:
            keys.append(f"{namespace}.*")
        if app:
            keys.append(f"*.{app}")
        keys.append("default")
        for key in keys:
            if key in self.scoped:
                return key, self.scoped[key]
        return "RUNBOOK_AUTOFIX_POLICY", self.inline

    def match(
        self,
        name: str | list[str],
        reasons: list[str],
        namespace: str | None,
        app: str | None,
        cause: str | None = None,
    ) -> Rule | None:
        """The first rule for ``name`` (an alert name or metric, or a list of both) and
        the probable cause's service ``cause``."""
        key, rules = self.rules_for(namespace, app)
        for rule in rules:
            if rule.matches(name, reasons, cause):
                return rule
        if key != "RUNBOOK_AUTOFIX_POLICY":  # a scoped key without a match falls back
            for rule in self.inline:
                if rule.matches(name, reasons, cause):
                    return rule
        return None

    def __len__(self) -> int:
        return len(self.inline) + sum(len(r) for r in self.scoped.values())


def _checked(rule: Rule, setting: str) -> Rule:
    cls = ACTIONS.get(rule.action)
    if cls is None:
        known = ", ".join(sorted(ACTIONS))
        raise ConfigError(f"{setting}: {rule.where}: unknown action {rule.action!r} ({known})")
    risk = rule.risk if rule.risk is not None else cls.default_risk
    if risk not in RISKS:
        raise ConfigError(f"{setting}: {rule.where}: risk must be low, medium or high")
    try:
        params = cls.validate(rule.params)
    except ActionError as exc:
        raise ConfigError(f"{setting}: {rule.where}: {rule.action}: {exc}") from None
    return Rule(rule.match, rule.action, params, rule.reason, risk, rule.where, rule.cause)


def parse_inline(text: str | None) -> list[Rule]:
    """Rules of ``RUNBOOK_AUTOFIX_POLICY``."""
    rules = []
    for n, part in enumerate((text or "").split(";"), start=1):
        part = part.strip()
        if not part:
            continue
        lhs, sep, rhs = part.partition("=")
        if not sep or not lhs.strip() or not rhs.strip():
            raise ConfigError(
                f"RUNBOOK_AUTOFIX_POLICY: rule {n} {part!r}: expected NAME[:REASON]=ACTION[:ARG]"
            )
        name, _, reason = lhs.strip().partition(":")
        action, _, arg = rhs.strip().partition(":")
        params: dict[str, Any] = {}
        if arg:
            cls = ACTIONS.get(action)
            if cls is None:
                raise ConfigError(f"RUNBOOK_AUTOFIX_POLICY: rule {n}: unknown action {action!r}")
            try:
                params = cls.inline_params(arg)
            except ActionError as exc:
                raise ConfigError(f"RUNBOOK_AUTOFIX_POLICY: rule {n}: {action}: {exc}") from None
        rule = Rule(name, action, params, reason or None, None, f"rule {n}")
        rules.append(_checked(rule, "RUNBOOK_AUTOFIX_POLICY"))
    return rules


def parse_file(path: Path) -> dict[str, list[Rule]]:
    """Rules of ``RUNBOOK_POLICY_FILE`` by scope key."""
    setting = "RUNBOOK_POLICY_FILE"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{setting}: {path}{line}: invalid YAML") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{setting}: {path}: the top level must map scope keys to rule lists")
    out: dict[str, list[Rule]] = {}
    for key_node, rules_node in root.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key != "default" and (key.count(".") != 1 or key in ("*.*", ".")):
            raise ConfigError(
                f"{setting}: {path} line {line}: key {key!r} must be <namespace>.<app>,"
                " <namespace>.*, *.<app> or default"
            )
        if not isinstance(rules_node, yaml.SequenceNode):
            raise ConfigError(f"{setting}: {path} line {line}: {key} must hold a list of rules")
        rules = []
        for item in rules_node.value:
            where = f"{path} line {item.start_mark.line + 1}"
            data = yaml.safe_load(yaml.serialize(item))
            if not isinstance(data, dict):
                raise ConfigError(f"{setting}: {where}: a rule is a mapping")
            unknown = set(data) - {"match", "reason", "action", "params", "risk", "cause"}
            if unknown:
                raise ConfigError(f"{setting}: {where}: unknown field {sorted(unknown)[0]!r}")
            if not data.get("match") or not data.get("action"):
                raise ConfigError(f"{setting}: {where}: a rule needs match and action")
            params = data.get("params") or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{setting}: {where}: params must be a mapping")
            rule = Rule(
                str(data["match"]),
                str(data["action"]),
                params,
                str(data["reason"]) if data.get("reason") else None,
                None if data.get("risk") is None else str(data["risk"]),
                where,
                str(data["cause"]) if data.get("cause") else None,
            )
            rules.append(_checked(rule, setting))
        out[key] = rules
    return out


def load_policy(inline: str | None, file: Path | None) -> Policy:
    return Policy(scoped=parse_file(file) if file else {}, inline=parse_inline(inline))
