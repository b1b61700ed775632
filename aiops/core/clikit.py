"""Pieces every ``aiops`` subcommand shares: output format, one-line failures, settings."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from aiops.core.errors import AiopsError, ConfigError


class Format(str, Enum):
    table = "table"
    json = "json"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr (redacted: no URL password or token); return the Exit."""
    from aiops.core.redact import redact

    print(redact(f"aiops: {' '.join(message.split())}"), file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def database_errors(limit: int = 200) -> Iterator[None]:
    """One line and an exit code for a database a command cannot use: what is wrong with
    it (a schema to migrate, a bad URL: exit 2), or that it cannot be reached (exit 1)."""
    from aiops.core.redact import short_error

    try:
        yield
    except typer.Exit:
        raise
    except AiopsError as exc:
        raise fail(f"database: {exc}") from None
    except Exception as exc:
        raise fail(f"database unreachable: {short_error(exc, limit)}", 1) from None


def warn(message: str) -> None:
    """Print one loud warning line to stderr (redacted), the command goes on."""
    from aiops.core.redact import redact

    print(redact(f"aiops: WARNING: {' '.join(message.split())}"), file=sys.stderr)


_warned_unknown = False


def load(**overrides: Any) -> Any:
    """Settings with command-line overrides; a bad setting ends the command with one line,
    an unknown ``AIOPS_*`` / ``RUNBOOK_*`` variable (a typo) gets a warning line, once."""
    global _warned_unknown
    from aiops.core.settings import load_settings, unknown_variables

    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None
    if not _warned_unknown:
        _warned_unknown = True
        for line in unknown_variables():
            warn(line)
    return settings


PromUrl = Annotated[
    str | None, typer.Option("--prom-url", help="Prometheus URL (overrides PROM_URL)")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (overrides AIOPS_CONFIG)")
]


def parse_time(text: str, option: str) -> float:
    """Epoch seconds from an epoch number, an ISO date, or ``now-2d`` / ``-6h``."""
    from aiops.core.durations import parse_duration

    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    rel = value.removeprefix("now")
    if rel.startswith("-"):
        try:
            return time.time() - parse_duration(rel[1:])
        except ValueError:
            raise fail(f"{option}: not a time: {text!r}") from None
    if value == "now":
        return time.time()
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: not a time: {text!r} (epoch, ISO 8601 or now-6h)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()
