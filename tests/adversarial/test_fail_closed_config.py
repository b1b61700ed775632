"""Fail closed at start, as an operator starts it: the real ``aiops`` command.

- With actions enabled and not a dry run, ``aiops webhook`` does not start unless every
  input that can trigger an action is authenticated with a secret of at least 16
  characters: one line naming the setting and what to do, exit 2, no traceback, never
  the secret. A dry run starts, with one loud warning naming what is unauthenticated;
  with every credential (the demo's set) it starts.
- Bad configuration stops ``aiops webhook`` / ``aiops detect`` with one line naming the
  setting and exit 2 (a Redis URL that is none, an infinite or NaN float, the hourly
  breaker above the daily one, a ``javascript:`` public URL, a webhook URL that is none,
  a lookback that cannot hold the longest window plus the warm-up); an unknown
  ``AIOPS_*`` / ``RUNBOOK_*`` variable warns naming the closest setting, and starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from aiops.core.errors import ConfigError
from aiops.core.settings import OTHER_VARIABLES, known_variables, load_settings, unknown_variables
from demo.prometheus import free_port, stop_process
from detector.catalogue import resolve_catalogue
from runbooks.policy import load_policy
from runbooks.startup import MIN_SECRET_LENGTH, check_start
from tests.integration.conftest import SETTING_PREFIXES, aiops_command, clean_env, run_aiops

REPO = Path(__file__).resolve().parents[2]

WEBHOOK_SECRET = "hook-secret-0123456789abcdef"  # 28 characters
AM_TOKEN = "am-token-0123456789abcdef"
APPROVAL = "approval-0123456789abcdef"
SLACK_BOT = "xoxb-bot-0123456789abcdef"
SLACK_SIGNING = "slack-signing-0123456789abcdef"


def _policy(tmp_path: Path, risk: str = "low") -> Path:
    path = tmp_path / f"policy-{risk}.yaml"
    path.write_text(
        f"default:\n  - match: latency_p99\n    action: command\n"
        f"    params: {{argv: ['true']}}\n    risk: {risk}\n"
    )
    return path


class Start:
    """``aiops <command>`` started as its own process: it exits (refused) or serves."""

    def __init__(self, tmp_path: Path, command: str, **env: str) -> None:
        self.port = free_port()
        port_var = "RUNBOOK_HTTP_PORT" if command == "webhook" else "AIOPS_HTTP_PORT"
        host_var = "RUNBOOK_HTTP_HOST" if command == "webhook" else "AIOPS_HTTP_HOST"
        base = {
            "AIOPS_DATABASE_URL": f"sqlite:///{tmp_path}/aiops-{self.port}.db",
            host_var: "127.0.0.1",
            port_var: str(self.port),
            "PROM_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: never used here
            "AIOPS_PROM_RETRIES": "0",
            "AIOPS_RETRAIN_CRON": "off",
        }
        self.env = clean_env(**{**base, **env})
        self.err = tmp_path / f"stderr-{self.port}.txt"
        self.command = command

    def run(self, timeout: float = 60.0) -> tuple[int | None, list[str]]:
        """(exit code, or None if it started serving; its stderr lines)."""
        with self.err.open("wb") as err:
            proc = subprocess.Popen(
                [*aiops_command(), self.command],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        code: int | None = None
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    code = proc.returncode
                    break
                try:
                    httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                break  # it answers: it started
            else:
                raise AssertionError(f"aiops {self.command} neither exited nor served")
        finally:
            stop_process(proc)
        lines = [line for line in self.err.read_text().splitlines() if line.strip()]
        return code, lines


def _refused(start: Start, setting: str, *secrets: str) -> str:
    code, lines = start.run()
    assert code is not None, f"it started: {lines}"
    assert code == 2, lines
    assert len(lines) == 1, lines  # one line, no traceback
    (line,) = lines
    assert line.startswith(f"aiops: config error: {setting}"), line
    assert "Traceback" not in line
    for secret in secrets:
        assert secret not in line
    return line


# -- item 1: actions that really run need every input authenticated -------------------------


LIVE = {"RUNBOOK_AUTOFIX_ENABLED": "true", "RUNBOOK_AUTOFIX_DRY_RUN": "false"}
ALL = {"RUNBOOK_WEBHOOK_SECRET": WEBHOOK_SECRET, "RUNBOOK_ALERTMANAGER_TOKEN": AM_TOKEN}


#: (id, what changes from a complete live configuration, the policy's risk, the setting named)
GAPS = [
    (
        "no-alertmanager-token",
        {"RUNBOOK_ALERTMANAGER_TOKEN": None},
        "low",
        "RUNBOOK_ALERTMANAGER_TOKEN",
    ),
    ("no-webhook-secret", {"RUNBOOK_WEBHOOK_SECRET": None}, "low", "RUNBOOK_WEBHOOK_SECRET"),
    (
        "one-character-webhook-secret",
        {"RUNBOOK_WEBHOOK_SECRET": "k"},
        "low",
        "RUNBOOK_WEBHOOK_SECRET",
    ),
    (
        "short-webhook-secret",
        {"RUNBOOK_WEBHOOK_SECRET": "wh-SHORT-14chr"},
        "low",
        "RUNBOOK_WEBHOOK_SECRET",
    ),
    (
        "short-alertmanager-token",
        {"RUNBOOK_ALERTMANAGER_TOKEN": "am-SHORT-15char"},
        "low",
        "RUNBOOK_ALERTMANAGER_TOKEN",
    ),
    (
        "require-approval-without-secret",
        {"RUNBOOK_AUTOFIX_REQUIRE_APPROVAL": "true"},
        "low",
        "RUNBOOK_APPROVAL_SECRET",
    ),
    ("high-risk-rule-without-secret", {}, "high", "RUNBOOK_APPROVAL_SECRET"),
    (
        "short-approval-secret",
        {"RUNBOOK_APPROVAL_SECRET": "appr-SHORT"},
        "high",
        "RUNBOOK_APPROVAL_SECRET",
    ),
    (
        "slack-bot-without-signing-secret",
        {"SLACK_BOT_TOKEN": SLACK_BOT, "SLACK_CHANNEL": "#ops"},
        "low",
        "SLACK_SIGNING_SECRET",
    ),
    (
        "slack-short-signing-secret",
        {
            "SLACK_BOT_TOKEN": SLACK_BOT,
            "SLACK_SIGNING_SECRET": "slack-SHORT",
            "SLACK_CHANNEL": "#o",
        },
        "low",
        "SLACK_SIGNING_SECRET",
    ),
    (
        "slack-bot-without-channel",
        {"SLACK_BOT_TOKEN": SLACK_BOT, "SLACK_SIGNING_SECRET": SLACK_SIGNING},
        "low",
        "SLACK_CHANNEL",
    ),
    ("short-admin-token", {"RUNBOOK_ADMIN_TOKEN": "admin-SHORT"}, "low", "RUNBOOK_ADMIN_TOKEN"),
]
#: the cases started as an operator would (the others are judged in-process, by the same rule)
CLI_GAPS = {
    "no-alertmanager-token",
    "short-webhook-secret",
    "high-risk-rule-without-secret",
    "require-approval-without-secret",
    "slack-bot-without-signing-secret",
    "slack-bot-without-channel",
}


def _only(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment holds these settings and no other."""
    for k in list(os.environ):
        if k.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _live_env(tmp_path: Path, change: dict[str, str | None], risk: str) -> dict[str, str]:
    env = {**LIVE, **ALL, "RUNBOOK_POLICY_FILE": str(_policy(tmp_path, risk))}
    env.update({k: v for k, v in change.items() if v is not None})
    for k in [k for k, v in change.items() if v is None]:
        env.pop(k)
    return env


@pytest.mark.parametrize(
    ("change", "risk", "setting"),
    [g[1:] for g in GAPS if g[0] in CLI_GAPS],
    ids=[g[0] for g in GAPS if g[0] in CLI_GAPS],
)
def test_with_actions_live_the_webhook_refuses_to_start_without_each_credential(
    tmp_path, change, risk, setting
):
    env = _live_env(tmp_path, change, risk)
    secrets = [v for k, v in env.items() if "SECRET" in k or "TOKEN" in k]
    line = _refused(Start(tmp_path, "webhook", **env), setting, *secrets)
    assert "RUNBOOK_AUTOFIX_DRY_RUN=false" in line  # says why it is required
    if setting != "SLACK_CHANNEL":
        assert f"at least {MIN_SECRET_LENGTH} characters" in line  # and what to do


@pytest.mark.parametrize(
    ("change", "risk", "setting"), [g[1:] for g in GAPS], ids=[g[0] for g in GAPS]
)
def test_the_fail_closed_rule_names_each_missing_or_short_credential(
    tmp_path, monkeypatch, change, risk, setting
):
    """The rule ``aiops webhook`` applies (runbooks.startup.check_start), every case."""
    env = _live_env(tmp_path, change, risk)
    _only(monkeypatch, env)
    settings = load_settings(metrics=None, config=None)
    policy = load_policy(settings.autofix_policy, settings.policy_file)
    with pytest.raises(ConfigError) as info:
        check_start(settings, policy)
    message = str(info.value)
    assert message.startswith(setting), message
    for k, v in env.items():
        if ("SECRET" in k or "TOKEN" in k) and len(v) > 3:
            assert v not in message
    # the same settings in a dry run: a warning naming it, no refusal
    dry = settings.model_copy(update={"autofix_dry_run": True})
    warning = check_start(dry, policy)
    assert warning is not None and setting in warning
    # and with actions off, nothing to say
    assert check_start(settings.model_copy(update={"autofix_enabled": False}), policy) is None


def test_a_dry_run_with_unauthenticated_inputs_starts_with_a_loud_warning(tmp_path):
    start = Start(
        tmp_path,
        "webhook",
        RUNBOOK_AUTOFIX_ENABLED="true",
        RUNBOOK_AUTOFIX_DRY_RUN="true",
        RUNBOOK_WEBHOOK_SECRET="k",
        RUNBOOK_POLICY_FILE=str(_policy(tmp_path, "high")),
        AIOPS_LOG_LEVEL="ERROR",
    )
    code, lines = start.run()
    assert code is None, lines  # it started
    warnings = [line for line in lines if "WARNING" in line]
    assert len(warnings) == 1, lines
    (warning,) = warnings
    assert warning.startswith("aiops: WARNING: DRY RUN WITH UNAUTHENTICATED INPUTS:")
    for setting in (
        "RUNBOOK_WEBHOOK_SECRET",
        "RUNBOOK_ALERTMANAGER_TOKEN",
        "RUNBOOK_APPROVAL_SECRET",
    ):
        assert setting in warning


def test_with_every_credential_the_live_webhook_starts(tmp_path):
    env = {
        **LIVE,
        **ALL,
        "RUNBOOK_APPROVAL_SECRET": APPROVAL,
        "RUNBOOK_AUTOFIX_REQUIRE_APPROVAL": "true",
        "SLACK_BOT_TOKEN": SLACK_BOT,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING,
        "SLACK_CHANNEL": "#ops",
        "SLACK_API_URL": f"http://127.0.0.1:{free_port()}",
        "RUNBOOK_POLICY_FILE": str(_policy(tmp_path, "high")),
    }
    code, lines = Start(tmp_path, "webhook", **env).run()
    assert code is None, lines
    assert not [line for line in lines if "WARNING: DRY RUN" in line]


def test_the_demo_s_webhook_settings_pass_the_rule(tmp_path):
    """demo/up.py starts its webhook with actions enabled (a dry run unless --autofix) and
    32-hex-character secrets: both modes pass the rule, and so start."""
    import secrets

    for autofix in (False, True):
        settings = load_settings(
            metrics=None,
            config=None,
            database_url=f"sqlite:///{tmp_path}/demo.db",
            webhook_secret=secrets.token_hex(16),
            alertmanager_token=secrets.token_hex(16),
            approval_secret=secrets.token_hex(16),
            autofix_enabled=True,
            autofix_dry_run=not autofix,
            policy_file=_policy(tmp_path, "high"),
        )
        policy = load_policy(settings.autofix_policy, settings.policy_file)
        assert check_start(settings, policy) is None


# -- item 12: bad configuration stops the start ---------------------------------------------


def _lookback_config(tmp_path: Path) -> Path:
    path = tmp_path / "aiops.yaml"
    path.write_text("queries:\n  - {name: short_history, promql: up, lookback: 1h}\n")
    return path


#: (id, command, environment, the setting named)
BAD = [
    ("redis-notaurl", "webhook", {"RUNBOOK_REDIS_URL": "notaurl"}, "RUNBOOK_REDIS_URL"),
    (
        "redis-bad-port",
        "webhook",
        {"RUNBOOK_REDIS_URL": "redis://:red-PASS@r:notaport/0"},
        "RUNBOOK_REDIS_URL",
    ),
    ("redis-no-host", "webhook", {"RUNBOOK_REDIS_URL": "redis://"}, "RUNBOOK_REDIS_URL"),
    ("z-thresh-inf", "detect", {"AIOPS_Z_THRESH": "inf"}, "AIOPS_Z_THRESH"),
    ("z-thresh-nan", "detect", {"AIOPS_Z_THRESH": "nan"}, "AIOPS_Z_THRESH"),
    ("interval-inf", "detect", {"AIOPS_INTERVAL_SECONDS": "inf"}, "AIOPS_INTERVAL_SECONDS"),
    ("cooldown-nan", "webhook", {"RUNBOOK_COOLDOWN_SECONDS": "nan"}, "RUNBOOK_COOLDOWN_SECONDS"),
    ("rate-limit-inf", "webhook", {"RUNBOOK_RATE_LIMIT": "inf"}, "RUNBOOK_RATE_LIMIT"),
    (
        "hourly-above-default-daily",
        "webhook",
        {"RUNBOOK_CIRCUIT_MAX_HOURLY": "11"},
        "RUNBOOK_CIRCUIT_MAX_HOURLY",
    ),
    (
        "hourly-above-daily",
        "webhook",
        {"RUNBOOK_CIRCUIT_MAX_HOURLY": "5", "RUNBOOK_CIRCUIT_MAX_DAILY": "4"},
        "RUNBOOK_CIRCUIT_MAX_HOURLY",
    ),
    (
        "public-url-javascript",
        "webhook",
        {"RUNBOOK_PUBLIC_URL": "javascript:alert(1)"},
        "RUNBOOK_PUBLIC_URL",
    ),
    ("public-url-no-host", "webhook", {"RUNBOOK_PUBLIC_URL": "http://"}, "RUNBOOK_PUBLIC_URL"),
    (
        "webhook-url-not-a-url",
        "detect",
        {"RUNBOOK_WEBHOOK_URL": "not-a-url"},
        "RUNBOOK_WEBHOOK_URL",
    ),
    (
        "alertmanager-url-ftp",
        "webhook",
        {"RUNBOOK_ALERTMANAGER_URL": "ftp://am:9093"},
        "RUNBOOK_ALERTMANAGER_URL",
    ),
]
CLI_BAD = {
    "redis-notaurl",
    "z-thresh-inf",
    "hourly-above-daily",
    "public-url-javascript",
    "webhook-url-not-a-url",
}


@pytest.mark.parametrize(
    ("command", "env", "setting"),
    [b[1:] for b in BAD if b[0] in CLI_BAD],
    ids=[b[0] for b in BAD if b[0] in CLI_BAD],
)
def test_bad_configuration_stops_the_start_with_one_line(tmp_path, command, env, setting):
    line = _refused(Start(tmp_path, command, **env), setting)
    assert line.startswith(f"aiops: config error: {setting}: ")


@pytest.mark.parametrize(
    ("command", "env", "setting"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_every_bad_value_is_refused_naming_its_setting(monkeypatch, command, env, setting):
    """The same check every command applies at start (load_settings), every case."""
    _only(monkeypatch, env)
    with pytest.raises(ConfigError) as info:
        load_settings(metrics=None, config=None)
    assert str(info.value).startswith(f"{setting}: "), info.value
    assert "red-PASS" not in str(info.value)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_a_catalogue_number_must_be_finite_too(tmp_path, monkeypatch, value):
    path = tmp_path / "aiops.yaml"
    path.write_text(f"queries:\n  - {{name: q, promql: up, min_scale: {value}}}\n")
    _only(monkeypatch, {"AIOPS_CONFIG": str(path)})
    with pytest.raises(ConfigError, match=r"^AIOPS_CONFIG: query 'q': min_scale: .*finite"):
        resolve_catalogue(load_settings(metrics=None))


def test_a_lookback_that_cannot_hold_the_longest_window_and_the_warm_up_is_refused(tmp_path):
    start = Start(tmp_path, "detect", AIOPS_CONFIG=str(_lookback_config(tmp_path)))
    code, lines = start.run()
    assert code == 2, lines
    (line,) = lines
    assert line.startswith("aiops: config error: query 'short_history': lookback 3600s"), line
    assert "longest window (3600s)" in line and "AIOPS_CONFIG" in line and "1h30m" in line
    # the same for the global setting, naming it
    code, lines = Start(tmp_path, "detect", AIOPS_LOOKBACK="1h").run()
    assert code == 2 and len(lines) == 1, lines
    assert "lookback 3600s" in lines[0] and "raise AIOPS_LOOKBACK to at least 1h30m" in lines[0]


def test_an_unknown_variable_warns_naming_the_closest_setting_and_the_command_runs(tmp_path):
    env = clean_env(
        AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/q.db",
        AIOPS_Z_TRESH="4",
        RUNBOOK_WEBHOK_SECRET="typo-SECRET-5a1e",
        AIOPS_TEST_POSTGRES_URL="postgresql://tests/only",  # the test suite's own: no warning
    )
    proc = run_aiops("queries", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [
        "aiops: WARNING: AIOPS_Z_TRESH is not a setting and is ignored; did you mean"
        " AIOPS_Z_THRESH?",
        "aiops: WARNING: RUNBOOK_WEBHOK_SECRET is not a setting and is ignored; did you mean"
        " RUNBOOK_WEBHOOK_SECRET?",
    ]
    assert "typo-SECRET-5a1e" not in proc.stderr


def test_every_variable_the_project_itself_sets_is_known():
    """Scripts, the demo, benchmarks, CI, the deploy files and the code name only
    settings (or the few known non-settings): none of them would warn."""
    pattern = re.compile(r"\b(?:AIOPS|RUNBOOKS?)_[A-Z][A-Z0-9_]*\b")
    roots = ["scripts", "demo", "bench", ".ci", "deploy", "detector", "runbooks", "training"]
    files = [p for root in roots for p in (REPO / root).rglob("*") if p.is_file()]
    files += [REPO / n for n in ("docker-compose.yml", "Dockerfile")]
    names = {
        m
        for f in files
        if f.suffix not in (".pyc", ".png", ".db")
        for m in pattern.findall(f.read_text(errors="replace"))
    }
    # names that are prefixes in prose ("AIOPS_" settings) or tables' shorthand ("_DAILY")
    names = {n for n in names if not n.endswith("_")}
    assert {"AIOPS_TEST_POSTGRES_URL", "AIOPS_DB_PASSWORD"} <= OTHER_VARIABLES
    assert unknown_variables(dict.fromkeys(names, "x")) == []
    assert "AIOPS_Z_THRESH" in known_variables()
