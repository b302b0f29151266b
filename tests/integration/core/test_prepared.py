"""Prepared hot-path statements behave as ``Connection.execute`` does, on both back ends:
the same stored values (typed parameters included), the same transactions, the same
SQLAlchemy exceptions, and a lost connection invalidated. Inside ``autocommit`` a statement
commits on its own, ``transaction`` still holds several together, and the pool gets the
connection back as it lent it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, DateTime, bindparam, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.core.db.prepared import (
    Prepared,
    autocommit,
    end_read,
    fetch_one,
    run,
    transaction,
)

_AT = bindparam("at", type_=DateTime(timezone=True))
INSERT = text("INSERT INTO things (name, at, n) VALUES (:name, :at, :n)").bindparams(_AT)
# The same parameter twice: a positional style must repeat it in order.
BUMP = text("UPDATE things SET n = n + :by, at = :at WHERE name = :name OR n = :by").bindparams(_AT)
FIND = text("SELECT name, n FROM things WHERE name = :name")


def _things(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE things (name VARCHAR(20) PRIMARY KEY,"
                " at TIMESTAMP WITH TIME ZONE, n INTEGER NOT NULL)"
            )
        )
    return engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = _things(create_engine(database_url.replace("postgresql://", "postgresql+psycopg://")))
    yield engine
    engine.dispose()


def _prepared(conn: Connection) -> tuple[Prepared, Prepared, Prepared]:
    return (
        Prepared.compile(INSERT, conn.dialect),
        Prepared.compile(BUMP, conn.dialect),
        Prepared.compile(FIND, conn.dialect),
    )


def test_values_are_stored_as_execute_stores_them(engine: Engine) -> None:
    at = datetime(2026, 12, 6, 16, 5, 7, 123456, tzinfo=UTC)
    with engine.connect() as conn:
        insert, bump, find = _prepared(conn)
        with conn.begin():
            run(conn, insert, {"name": "prepared", "at": at, "n": 1})
            conn.execute(INSERT, {"name": "executed", "at": at, "n": 1})
        with conn.begin():
            assert run(conn, bump, {"by": 2, "at": at, "name": "prepared"}) == 1
        rows = conn.execute(text("SELECT name, at, n FROM things ORDER BY name")).all()
        end_read(conn)
        executed, prepared = rows
        assert prepared.at == executed.at  # the same text (SQLite) or timestamp
        assert (prepared.n, executed.n) == (3, 1)
        assert fetch_one(conn, find, {"name": "prepared"}) == ("prepared", 3)
        assert fetch_one(conn, find, {"name": "absent"}) is None
        end_read(conn)


def test_a_rolled_back_block_keeps_nothing(engine: Engine) -> None:
    with engine.connect() as conn:
        insert, _, find = _prepared(conn)
        with pytest.raises(RuntimeError), conn.begin():
            run(conn, insert, {"name": "gone", "at": None, "n": 1})
            raise RuntimeError("abandon")
        assert fetch_one(conn, find, {"name": "gone"}) is None
        end_read(conn)


def test_driver_errors_are_sqlalchemy_errors(engine: Engine) -> None:
    with engine.connect() as conn:
        insert, _, find = _prepared(conn)
        with conn.begin():
            run(conn, insert, {"name": "once", "at": None, "n": 1})
        with pytest.raises(IntegrityError), conn.begin():
            run(conn, insert, {"name": "once", "at": None, "n": 2})
        # The connection stays usable after the failed transaction.
        assert fetch_one(conn, find, {"name": "once"}) == ("once", 1)
        end_read(conn)


def test_a_lost_connection_is_invalidated(postgres_url: str) -> None:
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            find = Prepared.compile(text("SELECT 1 WHERE 1 = :one"), conn.dialect)
            assert fetch_one(conn, find, {"one": 1}) == (1,)
            end_read(conn)
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            end_read(conn)
            with engine.connect() as killer:
                killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DBAPIError) as raised:
                fetch_one(conn, find, {"one": 1})
            assert raised.value.connection_invalidated
            assert conn.invalidated
    finally:
        engine.dispose()


def _count(engine: Engine) -> int:
    """Rows committed, as another connection sees them."""
    with engine.connect() as other:
        return int(other.execute(text("SELECT count(*) FROM things")).scalar_one())


def test_inside_autocommit_a_statement_commits_on_its_own(postgres_url: str) -> None:
    """PostgreSQL only: SQLite's driver opens no transaction for a read, and ``autocommit``
    leaves it as it is (a write there goes in a ``transaction``)."""
    engine = _things(create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://")))
    try:
        with engine.connect() as conn:
            insert, _, find = _prepared(conn)
            with autocommit(conn):
                assert fetch_one(conn, find, {"name": "absent"}) is None
                run(conn, insert, {"name": "alone", "at": None, "n": 1})
                assert _count(engine) == 1  # committed before the block ends
                driver = conn.connection.dbapi_connection
                assert driver is not None and driver.info.transaction_status == 0  # none open
                with pytest.raises(IntegrityError):
                    run(conn, insert, {"name": "alone", "at": None, "n": 2})
                run(conn, insert, {"name": "after", "at": None, "n": 3})  # usable after it
            assert _count(engine) == 2
            # Outside it again, statements wait for a commit.
            with pytest.raises(RuntimeError), conn.begin():
                run(conn, insert, {"name": "dropped", "at": None, "n": 4})
                raise RuntimeError("abandon")
            assert _count(engine) == 2
    finally:
        engine.dispose()


def test_a_transaction_inside_autocommit_holds_its_statements_together(engine: Engine) -> None:
    with engine.connect() as conn:
        insert, bump, find = _prepared(conn)
        with autocommit(conn):
            with pytest.raises(IntegrityError), transaction(conn):
                run(conn, insert, {"name": "first", "at": None, "n": 1})
                run(conn, insert, {"name": "first", "at": None, "n": 2})
            assert _count(engine) == 0  # the first insert went with the second
            with transaction(conn):
                run(conn, insert, {"name": "a", "at": None, "n": 1})
                assert _count(engine) == 0  # not before the commit
                run(conn, bump, {"by": 5, "at": None, "name": "a"})
            assert _count(engine) == 1
            assert fetch_one(conn, find, {"name": "a"}) == ("a", 6)
            end_read(conn)


def test_the_pool_gets_its_connection_back_as_it_lent_it(postgres_url: str) -> None:
    engine = create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), pool_size=1, max_overflow=0
    )
    try:
        with engine.connect() as conn, autocommit(conn):
            driver: Any = conn.connection.dbapi_connection
            assert driver.autocommit
        with engine.connect() as conn:
            same = conn.connection.dbapi_connection is driver  # the same one, set back
            assert same and not driver.autocommit
        with pytest.raises(RuntimeError), engine.connect() as conn, autocommit(conn):
            raise RuntimeError("a failure inside")
        with engine.connect() as conn:
            same = conn.connection.dbapi_connection is driver
            assert same and not driver.autocommit
    finally:
        engine.dispose()


def test_a_connection_lost_inside_autocommit_never_returns_to_the_pool(postgres_url: str) -> None:
    """The server ends the session mid-block: the statement fails as a lost connection, the
    block ends without another error, and the pool hands out a fresh connection that is not
    committing on its own."""
    engine = _things(
        create_engine(
            postgres_url.replace("postgresql://", "postgresql+psycopg://"),
            pool_size=1,
            max_overflow=0,
        )
    )
    try:
        with engine.connect() as conn, autocommit(conn):
            insert, _, _ = _prepared(conn)
            lost: Any = conn.connection.dbapi_connection
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            end_read(conn)
            _terminate(postgres_url, pid)
            with pytest.raises(DBAPIError) as raised, transaction(conn):
                run(conn, insert, {"name": "never", "at": None, "n": 1})
            assert raised.value.connection_invalidated and conn.invalidated
        with engine.connect() as conn:
            fresh: Any = conn.connection.dbapi_connection
            assert fresh is not lost and not fresh.autocommit
        assert _count(engine) == 0
    finally:
        engine.dispose()


def _terminate(url: str, pid: int) -> None:
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        admin.dispose()
