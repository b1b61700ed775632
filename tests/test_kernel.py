"""The kernel's shared helpers (aiops.core)."""

from __future__ import annotations

from aiops.core.redact import redact, short_error


class Wrapped(Exception):
    """Like SQLAlchemy's DBAPIError: the driver's own error is ``orig``."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__("wrapper text that is not shown")
        self.orig = orig


def test_an_error_becomes_one_redacted_line_of_at_most_the_limit():
    exc = Wrapped(
        OSError("could not connect to\n  postgresql://aiops:s3cret-pw@db:5432/aiops\t(refused)")
    )
    line = short_error(exc)
    assert "s3cret-pw" not in line and "\n" not in line and "\t" not in line
    assert line.startswith("could not connect to postgresql://aiops:")
    assert "wrapper text" not in line  # the driver's error, not the wrapper's
    long = short_error(ValueError("x" * 500 + " password=hunter2"), 50)
    assert len(long) == 50 and "hunter2" not in long


def test_a_secret_is_redacted_before_the_line_is_cut():
    """Cut first, a URL cut between its password and the ``@`` would no longer look like
    user info and would show the password."""
    text = "connect failed: postgresql://aiops:s3cretpw@db:5432/aiops"
    cut_at = text.index("@")
    assert "s3cretpw" in redact(text[:cut_at])  # what cutting first would print
    assert "s3cretpw" not in short_error(RuntimeError(text), cut_at)


def test_a_label_key_ignores_the_order_of_the_labels():
    from aiops.core.series import label_key

    a = label_key({"app": "checkout", "namespace": "shop"})
    assert a == label_key({"namespace": "shop", "app": "checkout"})
    assert a != label_key({"app": "checkout", "namespace": "shop2"})
    assert {a: 1}[label_key({"namespace": "shop", "app": "checkout"})] == 1


def test_a_database_a_command_cannot_use_ends_it_with_one_line(capsys):
    import pytest
    import typer

    from aiops.core.clikit import database_errors
    from aiops.core.errors import ConfigError

    with pytest.raises(typer.Exit) as schema, database_errors():
        raise ConfigError("schema at 3, this release needs 5: run `aiops migrate`")
    assert schema.value.exit_code == 2
    assert capsys.readouterr().err == (
        "aiops: database: schema at 3, this release needs 5: run `aiops migrate`\n"
    )
    with pytest.raises(typer.Exit) as down, database_errors():
        raise OSError("connection refused: postgresql://aiops:s3cretpw@db:5432/aiops")
    assert down.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith("aiops: database unreachable: connection refused:")
    assert "s3cretpw" not in err and err.count("\n") == 1
    with pytest.raises(typer.Exit) as own, database_errors():
        raise typer.Exit(3)  # the command's own exit passes through
    assert own.value.exit_code == 3 and capsys.readouterr().err == ""


def test_the_settings_the_verdict_and_the_explainers_share_one_set_of_defaults():
    from aiops.core import defaults
    from aiops.core.settings import Settings
    from detector import explain
    from detector.verdict import Thresholds

    s = Settings(_env_file=None)
    assert Thresholds() == Thresholds.from_settings(s)
    assert (s.z_thresh, s.vol_mult, s.pct_thresh, s.spike_z, s.score_thresh) == (
        defaults.Z_THRESH,
        defaults.VOL_MULT,
        defaults.PCT_THRESH,
        defaults.SPIKE_Z,
        defaults.SCORE_THRESH,
    )
    assert explain.LevelShiftExplainer().threshold == defaults.Z_THRESH
    assert explain.TrendBreakExplainer().threshold == defaults.Z_THRESH
    assert explain.VolatilityExplainer().threshold == defaults.VOL_MULT
    assert explain.PercentChangeExplainer().threshold == defaults.PCT_THRESH
    spike = explain.SpikeExplainer()
    assert (spike.threshold, spike.band) == (defaults.SPIKE_Z, defaults.Z_THRESH)


def test_a_service_starts_on_an_unreachable_database_but_never_on_an_old_schema(tmp_path, caplog):
    import pytest
    from sqlalchemy.exc import OperationalError

    from aiops.core.settings import Settings
    from sql.migrate import MigrationError, open_database, status

    down = Settings(_env_file=None, database_url="postgresql://aiops:s3cretpw@127.0.0.1:1/aiops")
    with pytest.raises(OperationalError):
        open_database(down)  # a command fails
    engine = open_database(down, outage_ok=True)  # a service logs it and retries later
    assert engine.url.port == 1
    assert "database unreachable at start" in caplog.text and "s3cretpw" not in caplog.text
    old = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/old.db", auto_migrate=False)
    with pytest.raises(MigrationError, match="aiops migrate"):
        open_database(old, outage_ok=True)
    migrated = open_database(old.model_copy(update={"auto_migrate": True}))
    assert all(st.state == "applied" for st in status(migrated))
    assert open_database(old, outage_ok=True).url == migrated.url


def test_a_connection_waits_for_wal_mode_while_another_process_holds_the_write_lock(
    tmp_path, monkeypatch
):
    """Two `aiops migrate` at once on a new SQLite file: switching to WAL answers
    "database is locked" at once (no busy handler) while the other holds the lock, so
    the connection asks again until the holder commits."""
    import sqlite3
    import types

    from sqlalchemy import text

    from aiops.core import db

    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE t (x)")
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the first wait: the other process commits
        waits.append(seconds)
        if holder.in_transaction:
            holder.execute("COMMIT")

    monkeypatch.setattr(db, "time", types.SimpleNamespace(sleep=sleep, monotonic=time_monotonic))
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert waits, "the lock was never met: the test proves nothing"
    finally:
        holder.close()
        engine.dispose()


def time_monotonic() -> float:
    import time

    return time.monotonic()


def test_a_number_on_its_way_out_is_finite_or_none():
    import numpy as np

    from aiops.core.numbers import finite_or_none

    assert [finite_or_none(v) for v in (None, float("nan"), np.inf, -np.inf, "x")] == [None] * 5
    assert finite_or_none(np.float32(1.5)) == 1.5 and type(finite_or_none(np.int64(2))) is float
    assert finite_or_none(1 / 3, 6) == 0.333333
