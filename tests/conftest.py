"""Shared test helpers: real components are found or, in CI, required."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest

from tests.postgres import URL_ENV, PostgresProcess, find_bin_dir, postgres_url_or_start

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(path: str) -> str:
    """The binary's path; a missing binary fails in CI and skips elsewhere."""
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if found:
        return found
    message = f"{path} is not installed (run ./scripts/test.sh, which installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[PostgresProcess]:
    """A real PostgreSQL server for the session (``AIOPS_TEST_POSTGRES_URL`` or a local one).

    Missing PostgreSQL fails in CI and skips elsewhere, like :func:`require_binary`.
    """
    if not os.environ.get(URL_ENV, "").strip() and find_bin_dir() is None:
        message = (
            "PostgreSQL is not installed (no /usr/lib/postgresql/<N>/bin/initdb; "
            f"run ./scripts/setup.sh or set {URL_ENV})"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # As root the server runs as the postgres user, which cannot enter pytest's 0700 tmp dir.
    server = postgres_url_or_start(None if os.geteuid() == 0 else tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresProcess, request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a fresh, empty database for this test only."""
    label = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return postgres.create_database(f"t_{label}_{os.urandom(4).hex()}")
