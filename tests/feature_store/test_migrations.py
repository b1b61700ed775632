"""sql/migrate.py against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, func, insert, select, text

from aiops.core.db import make_engine
from demo.prometheus import free_port
from feature_store import tables
from sql.migrate import (
    MIGRATIONS_DIR,
    TABLE,
    MigrationError,
    discover,
    migrate,
    require_current,
    split_statements,
    status,
)
from tests.feature_store.dialects import DIALECTS, database_url, run_cli, start_cli

EXPECTED_TABLES = {
    "aiops_features",
    "aiops_models",
    "aiops_anomalies",
    "runbooks_audit",
    "aiops_locks",
    "runbooks_halts",
    "aiops_webhook_outbox",
    "aiops_changes",
    "runbooks_incident_members",
    "aiops_feedback",
    TABLE,
}


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of sql/migrations that a test may edit."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    return directory


def recorded(engine: Engine) -> list[tuple[int, str, str, float]]:
    with engine.connect() as conn:
        return [
            (int(v), n, c, float(a))
            for v, n, c, a in conn.exec_driver_sql(
                f"SELECT version, name, checksum, applied_at FROM {TABLE} ORDER BY version"
            )
        ]


def dialect_file(engine: Engine, stem: str) -> Path:
    """The file migration ``stem`` comes from on this engine's dialect."""
    own = MIGRATIONS_DIR / f"{stem}.{engine.dialect.name}.sql"
    return own if own.exists() else MIGRATIONS_DIR / f"{stem}.sql"


# -- applying ---------------------------------------------------------------------------


def test_migrate_creates_every_table_and_records_versions_with_checksums(engine):
    applied = migrate(engine)

    assert [m.label for m in applied] == [
        "001_init",
        "002_audit_append_only",
        "003_runbooks_state",
        "004_runbooks_halts",
        "005_webhook_outbox",
        "006_change_events",
        "007_incident_members",
        "008_feedback",
    ]
    assert set(sqlalchemy.inspect(engine).get_table_names()) >= EXPECTED_TABLES
    rows = recorded(engine)
    assert [(v, n) for v, n, _, _ in rows] == [
        (1, "init"),
        (2, "audit_append_only"),
        (3, "runbooks_state"),
        (4, "runbooks_halts"),
        (5, "webhook_outbox"),
        (6, "change_events"),
        (7, "incident_members"),
        (8, "feedback"),
    ]
    for (_, _, checksum, applied_at), stem in zip(
        rows,
        (
            "001_init",
            "002_audit_append_only",
            "003_runbooks_state",
            "004_runbooks_halts",
            "005_webhook_outbox",
            "006_change_events",
            "007_incident_members",
            "008_feedback",
        ),
        strict=True,
    ):
        assert checksum == hashlib.sha256(dialect_file(engine, stem).read_bytes()).hexdigest()
        assert abs(applied_at - time.time()) < 300


def test_a_second_run_applies_nothing_and_changes_no_record(engine):
    migrate(engine)
    before = recorded(engine)

    assert migrate(engine) == []
    assert recorded(engine) == before


def test_each_dialect_gets_its_own_trigger_file():
    sqlite_files = [m.path.name for m in discover("sqlite")]
    pg_files = [m.path.name for m in discover("postgresql")]
    assert sqlite_files[:2] == ["001_init.sql", "002_audit_append_only.sqlite.sql"]
    assert pg_files[:2] == ["001_init.sql", "002_audit_append_only.postgresql.sql"]
    assert sqlite_files[2:] == pg_files[2:]  # later migrations are shared
    init_sqlite, init_pg = discover("sqlite")[0].sql, discover("postgresql")[0].sql
    assert "AUTOINCREMENT" in init_sqlite and "JSONB" not in init_sqlite
    assert "JSONB" in init_pg and "BYTEA" in init_pg and "${" not in init_pg


def test_migrate_hands_back_a_connection_whose_transactions_still_roll_back(engine):
    """After migrate, engine.begin() must still be one transaction (not autocommit)."""
    migrate(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(insert(tables.locks).values(name="x", holder="h", acquired_at=1, expires_at=2))
        raise RuntimeError("roll back")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.locks)).scalar_one() == 0


def test_a_failing_migration_leaves_nothing_half_applied(engine, migrations_copy):
    (migrations_copy / "999_broken.sql").write_text(
        "CREATE TABLE aiops_half (id INTEGER PRIMARY KEY);\nCREATE TABLE aiops_half (oops);\n"
    )

    with pytest.raises(MigrationError, match=r"^999_broken\.sql: .*aiops_half"):
        migrate(engine, directory=migrations_copy)

    names = set(sqlalchemy.inspect(engine).get_table_names())
    assert "aiops_half" not in names
    assert "aiops_features" not in names  # 001 ran in the same, rolled back, transaction
    assert not sqlalchemy.inspect(engine).has_table(TABLE) or recorded(engine) == []


def test_two_cli_migrations_at_once_both_succeed_and_apply_each_migration_once(db_url):
    procs = [start_cli("migrate", "--database-url", db_url) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]

    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "is up to date" in out
    stdout = "".join(out for out, _ in results)
    dialect = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    assert stdout.count("applied 001_init.sql") == 1
    assert stdout.count(f"applied 002_audit_append_only.{dialect}.sql") == 1
    engine = make_engine(db_url)
    try:
        assert [v for v, *_ in recorded(engine)] == [m.version for m in discover(dialect)]
        assert set(sqlalchemy.inspect(engine).get_table_names()) >= EXPECTED_TABLES
    finally:
        engine.dispose()


# -- refusing history it does not recognise ---------------------------------------------


def test_a_migration_edited_after_it_was_applied_stops_the_run(engine, migrations_copy):
    migrate(engine, directory=migrations_copy)
    edited = migrations_copy / "001_init.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking afterthought\n")

    with pytest.raises(MigrationError, match=r"001_init\.sql was edited after it was applied"):
        migrate(engine, directory=migrations_copy)

    states = {st.version: st.state for st in status(engine, directory=migrations_copy)}
    assert states == {
        1: "edited",
        **{m.version: "applied" for m in discover(engine.dialect.name)[1:]},
    }
    with pytest.raises(MigrationError, match=r"001_init\.sql was edited"):
        require_current(engine, directory=migrations_copy)


def insert_future_version(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {TABLE} (version, name, checksum, applied_at)"
                " VALUES (999, 'from_the_future', 'abc', 0)"
            )
        )


def test_a_database_migrated_by_a_newer_release_is_refused(engine):
    migrate(engine)
    insert_future_version(engine)

    with pytest.raises(MigrationError, match=r"999_from_the_future.*newer aiops"):
        migrate(engine)
    assert status(engine)[-1].state == "unknown"
    with pytest.raises(MigrationError, match="999"):
        require_current(engine)


def test_cli_refuses_an_unknown_version_with_one_line_and_exit_code_2(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        insert_future_version(engine)
    finally:
        engine.dispose()

    done = run_cli("migrate", "--database-url", db_url)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aiops: migrate: ")
    assert "999_from_the_future" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_reports_an_unreachable_postgresql_in_one_line_with_exit_code_1():
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/aiops"

    done = run_cli("migrate", "--database-url", url)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aiops: migrate: database unreachable at postgresql+psycopg://")
    assert "Traceback" not in done.stderr


# -- status -------------------------------------------------------------------------------


def test_status_and_require_current_report_pending_then_applied(engine):
    before = status(engine)
    versions = [m.version for m in discover(engine.dialect.name)]
    assert [(st.version, st.state) for st in before] == [(v, "pending") for v in versions]
    with pytest.raises(MigrationError, match=r"not up to date \(missing 001_init\)"):
        require_current(engine)

    migrate(engine)

    after = status(engine)
    assert [(st.version, st.state) for st in after] == [(v, "applied") for v in versions]
    assert all(st.applied_at is not None for st in after)
    require_current(engine)  # raises if anything is still missing


def test_a_new_migration_file_shows_as_pending(engine, migrations_copy):
    migrate(engine, directory=migrations_copy)
    (migrations_copy / "999_extra.sql").write_text("CREATE TABLE aiops_extra (id INTEGER);\n")

    assert status(engine, directory=migrations_copy)[-1].state == "pending"
    with pytest.raises(MigrationError, match="missing 999_extra"):
        require_current(engine, directory=migrations_copy)
    assert [m.label for m in migrate(engine, directory=migrations_copy)] == ["999_extra"]
    require_current(engine, directory=migrations_copy)


def test_badly_named_migration_files_are_refused(migrations_copy):
    (migrations_copy / "3_oops.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"3_oops\.sql: migration files are named"):
        discover("sqlite", migrations_copy)


# -- the schema ---------------------------------------------------------------------------


def test_every_described_table_matches_the_migrated_schema(engine):
    migrate(engine)
    inspector = sqlalchemy.inspect(engine)

    for table in tables.metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == set(table.columns.keys()), table.name
        primary = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert sorted(primary) == sorted(c.name for c in table.primary_key), table.name
        for column in table.columns:
            if not column.primary_key:
                assert columns[column.name]["nullable"] == column.nullable, (
                    f"{table.name}.{column.name}"
                )


def test_runbooks_audit_is_append_only(engine):
    migrate(engine)
    audit = tables.audit
    with engine.begin() as conn:
        conn.execute(
            insert(audit).values(ts=1.0, kind="action", app="api", result="ok", details={"n": 1})
        )
        conn.execute(insert(audit).values(ts=2.0, kind="webhook"))

    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(audit.update().values(result="tampered"))
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(audit.delete().where(audit.c.kind == "action"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"), engine.begin() as c:
            c.exec_driver_sql("TRUNCATE runbooks_audit")

    with engine.connect() as conn:
        rows = conn.execute(select(audit.c.kind, audit.c.result).order_by(audit.c.ts)).all()
    assert [tuple(r) for r in rows] == [("action", "ok"), ("webhook", None)]


# -- splitting scripts --------------------------------------------------------------------


def test_split_statements_keeps_a_sqlite_trigger_body_whole():
    script = """
-- a comment before
CREATE TABLE t (a INTEGER);
CREATE TRIGGER t_no_update BEFORE UPDATE ON t
BEGIN
    SELECT RAISE(ABORT, 'no; really');
    SELECT 1;
END;
CREATE INDEX ix_t ON t (a); -- a trailing comment
INSERT INTO t VALUES (1);
"""
    parts = split_statements(script, "sqlite")

    assert len(parts) == 4
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    assert "SELECT 1;" in parts[1]
    assert parts[2].startswith("CREATE INDEX ix_t")
    assert parts[3] == "INSERT INTO t VALUES (1);"


def test_split_statements_keeps_a_postgresql_dollar_function_whole():
    script = """
CREATE TABLE t (
    a INTEGER, -- the value, never null;
    -- a note inside the statement that mentions $$ and ends in a semicolon;
    b TEXT
);
CREATE FUNCTION f() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'no';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER t_f BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f();
"""
    parts = split_statements(script, "postgresql")

    assert len(parts) == 3
    assert parts[0].startswith("CREATE TABLE t") and parts[0].endswith(");")
    assert parts[1].startswith("CREATE FUNCTION f()")
    assert parts[1].endswith("$$ LANGUAGE plpgsql;")
    assert "RETURN NULL;" in parts[1]
    assert parts[2].startswith("CREATE TRIGGER t_f")


def test_split_statements_of_the_real_trigger_migrations():
    by_dialect = {d: discover(d)[1].sql for d in DIALECTS}
    assert len(split_statements(by_dialect["sqlite"], "sqlite")) == 2
    assert len(split_statements(by_dialect["postgresql"], "postgresql")) == 3


def test_split_statements_refuses_a_script_ending_mid_statement():
    with pytest.raises(MigrationError, match="missing ';'"):
        split_statements("CREATE TABLE t (a INTEGER);\nCREATE TABLE u (b INTEGER)\n", "sqlite")
    with pytest.raises(MigrationError, match="missing ';'"):
        split_statements("CREATE FUNCTION f() AS $$\nBEGIN\nEND;\n", "postgresql")
