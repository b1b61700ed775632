"""The service's settings: one pydantic-settings class, read from the environment.

Every public variable of DESIGN 4.1 maps to one field (the field's alias is the
variable name). ``AIOPS_CONFIG`` may point at a YAML file whose top-level keys hold
the same settings (either the variable name or the field name) plus the
``queries:`` catalogue and the ``depends_on:`` map of the services; the environment
wins over the file, and explicit overrides (command-line options) win over both.

No other module reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aiops.core import defaults
from aiops.core.durations import parse_duration
from aiops.core.errors import ConfigError
from aiops.core.redact import redact


class Settings(BaseSettings):
    """All settings of the detector (and, later, of the other services)."""

    # every float setting is finite: inf or nan (AIOPS_Z_THRESH=inf) stops the start
    model_config = SettingsConfigDict(
        extra="ignore", case_sensitive=False, populate_by_name=True, allow_inf_nan=False
    )

    prom_url: str = Field(
        "http://localhost:9090", validation_alias=AliasChoices("PROM_URL", "prom_url")
    )
    prom_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("PROM_TOKEN", "prom_token")
    )
    prom_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices("AIOPS_PROM_TIMEOUT_SECONDS", "prom_timeout_seconds"),
    )
    prom_gzip: bool = Field(False, validation_alias=AliasChoices("AIOPS_PROM_GZIP", "prom_gzip"))
    prom_retries: int = Field(
        2, ge=0, le=10, validation_alias=AliasChoices("AIOPS_PROM_RETRIES", "prom_retries")
    )
    metrics: str | None = Field(None, validation_alias=AliasChoices("AIOPS_METRICS", "metrics"))
    config: Path | None = Field(None, validation_alias=AliasChoices("AIOPS_CONFIG", "config"))
    interval_seconds: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("AIOPS_INTERVAL_SECONDS", "interval_seconds")
    )
    z_thresh: float = Field(
        defaults.Z_THRESH, gt=0, validation_alias=AliasChoices("AIOPS_Z_THRESH", "z_thresh")
    )
    vol_mult: float = Field(
        defaults.VOL_MULT, gt=1, validation_alias=AliasChoices("AIOPS_VOL_MULT", "vol_mult")
    )
    spike_z: float = Field(
        defaults.SPIKE_Z, gt=0, validation_alias=AliasChoices("AIOPS_SPIKE_Z", "spike_z")
    )
    pct_thresh: float = Field(
        defaults.PCT_THRESH, gt=0, validation_alias=AliasChoices("AIOPS_PCT_THRESH", "pct_thresh")
    )
    score_thresh: float = Field(
        defaults.SCORE_THRESH,
        ge=0,
        le=1,
        validation_alias=AliasChoices("AIOPS_SCORE_THRESH", "score_thresh"),
    )
    novelty: float = Field(
        defaults.NOVELTY, ge=0, validation_alias=AliasChoices("AIOPS_NOVELTY", "novelty")
    )
    resolve_ratio: float = Field(
        defaults.RESOLVE_RATIO,
        gt=0,
        le=1,
        validation_alias=AliasChoices("AIOPS_RESOLVE_RATIO", "resolve_ratio"),
    )
    resolve_points: int = Field(
        defaults.RESOLVE_POINTS,
        ge=0,
        le=1000,
        validation_alias=AliasChoices("AIOPS_RESOLVE_POINTS", "resolve_points"),
    )
    lookback: str = Field("6h", validation_alias=AliasChoices("AIOPS_LOOKBACK", "lookback"))
    step: str = Field("60s", validation_alias=AliasChoices("AIOPS_STEP", "step"))
    model_refit_seconds: float = Field(
        3600.0,
        ge=0,
        validation_alias=AliasChoices("AIOPS_MODEL_REFIT_SECONDS", "model_refit_seconds"),
    )
    stale_after_seconds: float | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("AIOPS_STALE_AFTER_SECONDS", "stale_after_seconds"),
    )
    http_host: str = Field("0.0.0.0", validation_alias=AliasChoices("AIOPS_HTTP_HOST", "http_host"))
    http_port: int = Field(
        9109, ge=0, le=65535, validation_alias=AliasChoices("AIOPS_HTTP_PORT", "http_port")
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=AliasChoices("AIOPS_LOG_LEVEL", "log_level")
    )
    database_url: str = Field(
        "sqlite:///./var/aiops.db",
        validation_alias=AliasChoices("AIOPS_DATABASE_URL", "database_url"),
    )
    shard: str | None = Field(None, validation_alias=AliasChoices("AIOPS_SHARD", "shard"))
    #: threads computing the chunks of series of a cycle (0: one per usable CPU, at most 4)
    detect_threads: int = Field(
        0, ge=0, le=64, validation_alias=AliasChoices("AIOPS_DETECT_THREADS", "detect_threads")
    )
    auto_migrate: bool = Field(
        True, validation_alias=AliasChoices("AIOPS_AUTO_MIGRATE", "auto_migrate")
    )
    store_features: bool = Field(
        True, validation_alias=AliasChoices("AIOPS_STORE_FEATURES", "store_features")
    )
    retrain_cron: str = Field(
        "0 3 * * *", validation_alias=AliasChoices("AIOPS_RETRAIN_CRON", "retrain_cron")
    )
    train_history: str = Field(
        "14d", validation_alias=AliasChoices("AIOPS_TRAIN_HISTORY", "train_history")
    )
    feature_retention: str = Field(
        "2d", validation_alias=AliasChoices("AIOPS_FEATURE_RETENTION", "feature_retention")
    )
    train_tail: float = Field(
        0.15, gt=0, lt=0.5, validation_alias=AliasChoices("AIOPS_TRAIN_TAIL", "train_tail")
    )
    train_jobs: int = Field(-1, validation_alias=AliasChoices("AIOPS_TRAIN_JOBS", "train_jobs"))
    model_keep: int = Field(
        5, ge=1, le=100, validation_alias=AliasChoices("AIOPS_MODEL_KEEP", "model_keep")
    )
    dask_address: str | None = Field(
        None, validation_alias=AliasChoices("AIOPS_DASK_ADDRESS", "dask_address")
    )
    max_series_per_query: int = Field(
        1000,
        ge=1,
        validation_alias=AliasChoices("AIOPS_MAX_SERIES_PER_QUERY", "max_series_per_query"),
    )
    # -- the runbook webhook ---------------------------------------------------------
    webhook_url: str | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_WEBHOOK_URL", "webhook_url")
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_WEBHOOK_SECRET", "webhook_secret")
    )
    autofix_enabled: bool = Field(
        False, validation_alias=AliasChoices("RUNBOOK_AUTOFIX_ENABLED", "autofix_enabled")
    )
    autofix_dry_run: bool = Field(
        True, validation_alias=AliasChoices("RUNBOOK_AUTOFIX_DRY_RUN", "autofix_dry_run")
    )
    autofix_policy: str | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_AUTOFIX_POLICY", "autofix_policy")
    )
    policy_file: Path | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_POLICY_FILE", "policy_file")
    )
    circuit_max_hourly: int = Field(
        3, ge=0, validation_alias=AliasChoices("RUNBOOK_CIRCUIT_MAX_HOURLY", "circuit_max_hourly")
    )
    circuit_max_daily: int = Field(
        10, ge=0, validation_alias=AliasChoices("RUNBOOK_CIRCUIT_MAX_DAILY", "circuit_max_daily")
    )
    cooldown_seconds: float = Field(
        900.0, ge=0, validation_alias=AliasChoices("RUNBOOK_COOLDOWN_SECONDS", "cooldown_seconds")
    )
    #: the fleet-wide blast-radius guard: actions across every app per window
    max_actions_per_window: int = Field(
        3,
        ge=0,
        validation_alias=AliasChoices("RUNBOOK_MAX_ACTIONS_PER_WINDOW", "max_actions_per_window"),
    )
    action_window_seconds: float = Field(
        600.0,
        gt=0,
        validation_alias=AliasChoices("RUNBOOK_ACTION_WINDOW_SECONDS", "action_window_seconds"),
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_REDIS_URL", "redis_url")
    )
    require_approval: bool = Field(
        False, validation_alias=AliasChoices("RUNBOOK_AUTOFIX_REQUIRE_APPROVAL", "require_approval")
    )
    approval_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_APPROVAL_SECRET", "approval_secret")
    )
    approval_ttl_seconds: float = Field(
        3600.0,
        gt=0,
        validation_alias=AliasChoices("RUNBOOK_APPROVAL_TTL_SECONDS", "approval_ttl_seconds"),
    )
    alertmanager_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_ALERTMANAGER_TOKEN", "alertmanager_token")
    )
    #: bearer token of POST /feedback (operators' verdicts on anomalies); the admin
    #: token is accepted too
    feedback_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_FEEDBACK_TOKEN", "feedback_token")
    )
    admin_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_ADMIN_TOKEN", "admin_token")
    )
    #: bearer token the read endpoints (/audit, /events, /console) require
    read_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_READ_TOKEN", "read_token")
    )
    #: true: the read endpoints answer without a credential (an explicit choice)
    read_open: bool = Field(False, validation_alias=AliasChoices("RUNBOOK_READ_OPEN", "read_open"))
    alertmanager_url: str | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_ALERTMANAGER_URL", "alertmanager_url")
    )
    rate_limit: float = Field(
        100.0, gt=0, validation_alias=AliasChoices("RUNBOOK_RATE_LIMIT", "rate_limit")
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("RUNBOOK_MAX_BODY_BYTES", "max_body_bytes"),
    )
    action_timeout_seconds: float = Field(
        60.0,
        gt=0,
        validation_alias=AliasChoices("RUNBOOK_ACTION_TIMEOUT_SECONDS", "action_timeout_seconds"),
    )
    verify_seconds: float = Field(
        300.0, gt=0, validation_alias=AliasChoices("RUNBOOK_VERIFY_SECONDS", "verify_seconds")
    )
    public_url: str = Field(
        "http://localhost:8080", validation_alias=AliasChoices("RUNBOOK_PUBLIC_URL", "public_url")
    )
    webhook_host: str = Field(
        "0.0.0.0", validation_alias=AliasChoices("RUNBOOK_HTTP_HOST", "webhook_host")
    )
    webhook_port: int = Field(
        8080, ge=0, le=65535, validation_alias=AliasChoices("RUNBOOK_HTTP_PORT", "webhook_port")
    )
    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token")
    )
    slack_channel: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_CHANNEL", "slack_channel")
    )
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "slack_signing_secret")
    )
    slack_webhook: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNBOOKS_SLACK_WEBHOOK", "slack_webhook")
    )
    slack_api_url: str = Field(
        "https://slack.com/api", validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url")
    )
    approvers: str | None = Field(
        None, validation_alias=AliasChoices("RUNBOOK_APPROVERS", "approvers")
    )
    queries: list[dict[str, Any]] | None = Field(None, validation_alias=AliasChoices("queries"))
    #: the services' dependency map of the AIOPS_CONFIG file (``service: [services it
    #: calls]``): anomalies of services that call each other become one incident
    depends_on: Any = Field(None, validation_alias=AliasChoices("depends_on"))
    #: queries over Prometheus whose series are positive while a service changes
    #: (deploys, configuration): ``changes:`` in the AIOPS_CONFIG file
    change_queries: Any = Field(None, validation_alias=AliasChoices("changes"))
    incident_window_seconds: float = Field(
        300.0,
        gt=0,
        validation_alias=AliasChoices("AIOPS_INCIDENT_WINDOW_SECONDS", "incident_window_seconds"),
    )
    #: a new incident is posted to the webhook once it is this old: the storm's other
    #: members join it and its probable cause is known before anything acts
    incident_settle_seconds: float = Field(
        60.0,
        ge=0,
        validation_alias=AliasChoices("AIOPS_INCIDENT_SETTLE_SECONDS", "incident_settle_seconds"),
    )
    #: operators' feedback (detector.feedback): a false alarm's floor is at most this many
    #: times the threshold it crossed, and decays back with this half-life
    feedback_max_raise: float = Field(
        3.0,
        ge=1.0,
        le=100.0,
        validation_alias=AliasChoices("AIOPS_FEEDBACK_MAX_RAISE", "feedback_max_raise"),
    )
    feedback_half_life_days: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("AIOPS_FEEDBACK_HALF_LIFE_DAYS", "feedback_half_life_days"),
    )

    @field_validator("prom_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return check_http_url(v).rstrip("/")

    @field_validator("webhook_url", "public_url", "alertmanager_url", "slack_api_url")
    @classmethod
    def _check_http_url(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return check_redis_url(v.strip())

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        # a model-level error names its variable itself (load_settings shows it as is)
        if self.circuit_max_hourly > self.circuit_max_daily:
            raise ValueError(
                f"RUNBOOK_CIRCUIT_MAX_HOURLY: {self.circuit_max_hourly} is above"
                f" RUNBOOK_CIRCUIT_MAX_DAILY ({self.circuit_max_daily}); an hour's limit"
                " cannot exceed the day's: lower it or raise RUNBOOK_CIRCUIT_MAX_DAILY"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str) -> str:
        from aiops.core.db import normalise_url

        try:
            normalise_url(v)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("AIOPS_DATABASE_URL: ")) from None
        return absolute_sqlite_url(v)

    @field_validator("config", "policy_file")
    @classmethod
    def _absolute_path(cls, v: Path | None) -> Path | None:
        # resolved once, where it enters: no later reader (a child process started in
        # another folder, a reload) depends on the working directory
        return None if v is None else Path(v).expanduser().resolve()

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        i, sep, n = v.strip().partition("/")
        if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
            raise ValueError("must be i/n with 0 <= i < n, e.g. 0/2 and 1/2 for two replicas")
        return f"{int(i)}/{int(n)}"

    @property
    def shard_index(self) -> tuple[int, int] | None:
        if not self.shard:
            return None
        i, n = self.shard.split("/")
        return int(i), int(n)

    @field_validator("retrain_cron")
    @classmethod
    def _check_cron(cls, v: str) -> str:
        v = v.strip()
        if v.lower() in ("", "off", "none", "disabled"):
            return "off"
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as exc:
            raise ValueError(
                f"not a crontab expression ({exc}); use e.g. '0 3 * * *' or off"
            ) from None
        return v

    @field_validator("dask_address")
    @classmethod
    def _check_dask(cls, v: str | None) -> str | None:
        if v and not v.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ValueError("must be a Dask scheduler address like tcp://host:8786")
        return v or None

    @field_validator("train_jobs")
    @classmethod
    def _check_jobs(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be a positive number of processes, or -1 for one per core")
        return v

    @field_validator("train_history")
    @classmethod
    def _check_history(cls, v: str) -> str:
        if parse_duration(v) < 3600:
            raise ValueError("must be at least 1h")
        return v

    @field_validator("lookback", "step", "feature_retention")
    @classmethod
    def _check_duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @property
    def lookback_seconds(self) -> float:
        return parse_duration(self.lookback)

    @property
    def feature_retention_seconds(self) -> float:
        return parse_duration(self.feature_retention)

    @property
    def train_history_seconds(self) -> float:
        return parse_duration(self.train_history)

    @property
    def step_seconds(self) -> float:
        return parse_duration(self.step)

    @property
    def stale_after(self) -> float:
        """Seconds after which /healthz calls the last good cycle too old."""
        return self.stale_after_seconds or max(3 * self.interval_seconds, 60.0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, init_settings))


class _YamlSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by AIOPS_CONFIG (or the ``config`` override)."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        init = self._init()
        # the override arrives under the field name or its alias, by pydantic-settings version
        path = init.get("config") or init.get("AIOPS_CONFIG") or os.environ.get("AIOPS_CONFIG")
        if not path:
            return {}
        return read_yaml_config(Path(path))


def read_yaml_config(path: Path) -> dict[str, Any]:
    """Top-level mapping of a YAML config file, keys normalised to field names."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"AIOPS_CONFIG: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"AIOPS_CONFIG: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"AIOPS_CONFIG: {path}{line}: invalid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"AIOPS_CONFIG: {path}: top level must be a mapping of settings")
    fields = {}
    for name, info in Settings.model_fields.items():
        aliases = info.validation_alias.choices if info.validation_alias else [name]
        for alias in aliases:
            fields[str(alias).lower()] = name
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = fields.get(str(key).lower())
        if name is None:
            raise ConfigError(f"AIOPS_CONFIG: {path}: unknown setting {key!r}")
        out[name] = value
    return out


def _alias_of(field_name: str) -> str:
    info = Settings.model_fields.get(field_name)
    if info is None or info.validation_alias is None:
        return field_name
    return str(info.validation_alias.choices[0])


def absolute_sqlite_url(url: str) -> str:
    """``url`` with a relative SQLite file path made absolute (against the working
    directory now); other URLs, in-memory and ``file:`` databases unchanged."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or Path(database).is_absolute()
    ):
        return url
    absolute = parsed.set(database=str(Path(database).expanduser().resolve()))
    return absolute.render_as_string(hide_password=False)


def check_http_url(url: str) -> str:
    """``url`` if it is an http(s) URL naming a host (with a numeric port, if any)."""
    from urllib.parse import urlsplit

    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        problem = "not a URL"
    else:
        if parts.scheme.lower() not in ("http", "https"):
            problem = "must be an http(s) URL"
        elif not parts.hostname or any(c.isspace() for c in url):
            problem = "must be an http(s) URL with a host"
    if problem:
        raise ValueError(f"{problem}, e.g. http://host:8080")
    return url


def check_redis_url(url: str) -> str:
    """``url`` if redis-py can connect with it: redis:// or rediss:// with a host, or
    unix:// with a socket path (nothing is contacted here)."""
    from urllib.parse import urlsplit

    example = "e.g. redis://redis:6379/0, rediss://... or unix:///run/redis.sock"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError(f"not a Redis URL ({example})") from None
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss"):
        db = parts.path.strip("/")
        if not parts.hostname:
            raise ValueError(f"names no host ({example})")
        if db and not db.isdigit():
            raise ValueError(f"the database after the host must be a number ({example})")
    elif scheme == "unix":
        if not parts.path:
            raise ValueError(f"names no socket path ({example})")
    else:
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL ({example})")
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise ValueError(f"{exc} ({example})") from None
    return url


#: the prefixes of the service's own variables: one of these that is no setting is a typo
SETTING_PREFIXES = ("AIOPS_", "RUNBOOK_", "RUNBOOKS_")
#: variables with those prefixes that are not settings of the service: the test suite's
#: PostgreSQL server (tests/postgres.py) and Grafana's audit-database password (Compose)
OTHER_VARIABLES = frozenset({"AIOPS_TEST_POSTGRES_URL", "AIOPS_DB_PASSWORD"})


def known_variables() -> frozenset[str]:
    """Every environment variable the settings read (upper case)."""
    names = set()
    for info in Settings.model_fields.values():
        if info.validation_alias is not None:
            names.add(str(info.validation_alias.choices[0]).upper())
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``AIOPS_*`` / ``RUNBOOK_*`` variable that is no setting (a typo: it
    is ignored), naming the closest known variable."""
    import difflib

    known = known_variables()
    env = os.environ if environ is None else environ
    lines = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(SETTING_PREFIXES) or upper in known | OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.7)
        hint = f"did you mean {close[0]}?" if close else "see the README's Configuration"
        lines.append(f"{name} is not a setting and is ignored; {hint}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ConfigError naming the first bad variable, on one line."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings: its message names them
            raise ConfigError(redact(err["msg"].removeprefix("Value error, "))) from None
        field = str(err["loc"][0])
        name = _alias_of(field)
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        secret = Settings.model_fields.get(field) is not None and "SecretStr" in str(
            Settings.model_fields[field].annotation
        )
        shown = "" if isinstance(got, dict) or got is None or secret else f" (got {got!r})"
        # a URL's password never reaches the message (nor the log it ends up in)
        raise ConfigError(redact(f"{name}: {msg}{shown}")) from None
