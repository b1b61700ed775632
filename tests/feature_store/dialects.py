"""The two databases the feature store runs on, for parametrised fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DIALECTS = ("sqlite", "postgresql")
REPO = Path(__file__).resolve().parents[2]


def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database of ``request.param``: a SQLite file or a real PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/x.db"
    return request.getfixturevalue("pg_url")


def cli_env() -> dict[str, str]:
    """The environment for ``aiops`` subprocesses: no settings leak in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOPS_", "PROM_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``python -m aiops ARGS`` in the background, stdout and stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiops", *args],
        cwd=REPO,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = start_cli(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
