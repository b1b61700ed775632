"""aiops.core.db: database URLs, engines and retrying lost connections."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from aiops.core.db import is_disconnect, make_engine, normalise_url, retrying
from aiops.core.errors import ConfigError

# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://aiops:secret@db.example:5433/aiops",
        "postgres://aiops:secret@db.example:5433/aiops",
    ],
)
def test_postgres_urls_use_the_psycopg_driver(url):
    parsed = normalise_url(url)

    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "aiops",
        "secret",
        "db.example",
        5433,
        "aiops",
    )


def test_sqlite_urls_are_kept():
    assert normalise_url("sqlite:////var/lib/aiops/aiops.db").drivername == "sqlite"
    assert normalise_url("sqlite:////var/lib/aiops/aiops.db").database == "/var/lib/aiops/aiops.db"


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "mssql+pyodbc://h/db"])
def test_other_databases_are_refused_naming_the_setting(url):
    with pytest.raises(ConfigError, match=r"^AIOPS_DATABASE_URL: unsupported database"):
        normalise_url(url)


def test_a_string_that_is_no_url_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"^AIOPS_DATABASE_URL: not a database URL"):
        normalise_url("just some words")


# -- engines ----------------------------------------------------------------------------------


def test_a_sqlite_file_in_a_missing_folder_gets_its_folder_and_wal(tmp_path):
    path = tmp_path / "not" / "yet" / "there" / "aiops.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
        assert path.is_file()
    finally:
        engine.dispose()


def test_a_sqlite_path_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    engine = make_engine("sqlite:///~/state/aiops.db")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (a INTEGER)")
            conn.commit()
        assert (tmp_path / "state" / "aiops.db").is_file()
    finally:
        engine.dispose()


def test_make_engine_connects_to_postgresql_from_a_plain_url(pg_url):
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert plain != pg_url
    engine = make_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            assert conn.execute(text("select 41 + 1")).scalar_one() == 42
    finally:
        engine.dispose()


# -- retrying ---------------------------------------------------------------------------------


def gone() -> OperationalError:
    return OperationalError("x", {}, Exception("gone"))


class Flaky:
    """Raises ``failures`` errors, then returns "done"; counts its calls."""

    def __init__(self, failures: int, error=gone) -> None:  # type: ignore[no-untyped-def]
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return "done"


def test_retrying_reruns_work_after_a_lost_connection(caplog):
    work = Flaky(2)

    with caplog.at_level(logging.WARNING, logger="aiops.db"):
        assert retrying(work, attempts=3, delay=0.0, what="feature store") == "done"

    assert work.calls == 3
    assert caplog.text.count("feature store connection lost") == 2
    assert "gone" in caplog.text


def test_retrying_gives_up_after_n_attempts():
    work = Flaky(10)

    with pytest.raises(OperationalError, match="gone"):
        retrying(work, attempts=4, delay=0.0)

    assert work.calls == 4


def test_retrying_does_not_rerun_other_database_errors():
    work = Flaky(1, error=lambda: IntegrityError("insert", {}, Exception("duplicate key")))

    with pytest.raises(IntegrityError):
        retrying(work, attempts=3, delay=0.0)

    assert work.calls == 1


def test_retrying_runs_work_at_least_once():
    work = Flaky(0)
    assert retrying(work, attempts=0, delay=0.0) == "done"
    assert work.calls == 1


def test_is_disconnect():
    assert is_disconnect(gone())
    assert not is_disconnect(IntegrityError("x", {}, Exception("dup")))
    assert not is_disconnect(ValueError("x"))
