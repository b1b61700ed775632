"""The ``pg_url`` fixture gives a real, empty PostgreSQL database."""

from __future__ import annotations

import sqlalchemy


def test_pg_url_is_a_real_empty_postgres_database(pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            assert "PostgreSQL" in conn.execute(sqlalchemy.text("select version()")).scalar_one()
            assert sqlalchemy.inspect(conn).get_table_names() == []
            conn.execute(sqlalchemy.text("create table probe (id int primary key, note text)"))
            conn.execute(sqlalchemy.text("insert into probe values (1, 'ü')"))
            assert conn.execute(sqlalchemy.text("select note from probe")).scalar_one() == "ü"
            conn.execute(sqlalchemy.text("drop table probe"))
            assert sqlalchemy.inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
