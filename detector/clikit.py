"""Pieces every ``aiops`` subcommand shares: output format, one-line failures, settings."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from detector.errors import ConfigError


class Format(str, Enum):
    table = "table"
    json = "json"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr; return the Exit to raise."""
    print(f"aiops: {message}", file=sys.stderr)
    return typer.Exit(code)


def load(**overrides: Any) -> Any:
    """Settings with command-line overrides; a bad setting ends the command with one line."""
    from detector.settings import load_settings

    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None


PromUrl = Annotated[
    str | None, typer.Option("--prom-url", help="Prometheus URL (overrides PROM_URL)")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (overrides AIOPS_CONFIG)")
]
