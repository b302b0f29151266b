"""Hot-path statements run on the driver's own cursor, compiled once per dialect.

``Connection.execute`` does a lot of work per call besides the statement: a statement-cache
lookup, an execution context, parameter processing through the compiled form and a result
object. For the few statements a receiver runs per received instance that work cost more
CPU than SQLite itself (about 40 % of the interpreter's time at one association, profiled).
:class:`Prepared` compiles a ``text()`` statement once for the engine's dialect (its SQL in
the driver's parameter style, the order of positional parameters, the type processors of
its typed parameters) and :func:`execute` runs it on the connection's DBAPI cursor.

What callers see stays SQLAlchemy's: a driver error is raised as the matching
:class:`sqlalchemy.exc.DBAPIError` subclass (``IntegrityError``, ``OperationalError``…), and
a lost connection is invalidated as ``Connection.execute`` would do, with
``connection_invalidated`` set. Transactions are the connection's: the statements join
whatever the driver has open (``with conn.begin():`` commits them); :func:`end_read` ends a
read the driver may have opened (PostgreSQL opens one for a ``SELECT``, SQLite does not).

On PostgreSQL every transaction costs two round trips of its own (``BEGIN``, then ``COMMIT`` or
``ROLLBACK``): a read and a two-statement write took seven round trips where two statements
do the work. Inside :func:`autocommit` each statement commits on its own (one round trip), and
:func:`transaction` opens a real transaction where several statements must hold together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError


@dataclass(frozen=True)
class Prepared:
    """One statement in the dialect's own SQL and parameter style."""

    sql: str
    #: Parameter names in the order of a positional style (``?``), None for a named one.
    order: tuple[str, ...] | None
    #: Type processors of typed parameters (SQLite stores a timestamp as text, say).
    processors: Mapping[str, Callable[[Any], Any]]

    @classmethod
    def compile(cls, statement: TextClause, dialect: Dialect) -> Prepared:
        compiled = statement.compile(dialect=dialect)
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind in compiled.binds.values():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[bind.key] = processor
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return cls(str(compiled), order, processors)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """``values`` as the driver takes them for this statement."""
        processed = dict(values)
        for name, processor in self.processors.items():
            if name in processed:
                processed[name] = processor(processed[name])
        if self.order is None:
            return processed
        return tuple(processed[name] for name in self.order)


def execute(conn: Connection, prepared: Prepared, values: Mapping[str, Any]) -> Any:
    """Run ``prepared`` with ``values`` on ``conn``'s driver connection; returns the DBAPI
    cursor (``fetchone``, ``rowcount``), which the caller closes."""
    driver = conn.connection.dbapi_connection
    assert driver is not None  # a checked-out connection always has one
    dialect = conn.dialect
    cursor = driver.cursor()
    try:
        cursor.execute(prepared.sql, prepared.parameters(values))
    except dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, exc, prepared.sql, dict(values), cursor) from exc
    return cursor


def fetch_one(conn: Connection, prepared: Prepared, values: Mapping[str, Any]) -> Any:
    """The first row of ``prepared`` (a tuple in the statement's column order), or None."""
    cursor = execute(conn, prepared, values)
    try:
        return cursor.fetchone()
    finally:
        cursor.close()


def run(conn: Connection, prepared: Prepared, values: Mapping[str, Any]) -> int:
    """Run a data-changing ``prepared``; returns the number of rows it changed."""
    cursor = execute(conn, prepared, values)
    try:
        return int(cursor.rowcount)
    finally:
        cursor.close()


def end_read(conn: Connection) -> None:
    """End the transaction a read may have opened on the driver (and SQLAlchemy's, if any)."""
    if conn.in_transaction():
        conn.rollback()
        return
    driver = conn.connection.dbapi_connection
    assert driver is not None
    try:
        driver.rollback()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, exc, "ROLLBACK", None, None) from exc


def _on_its_own(conn: Connection) -> bool:
    """Whether ``conn``'s driver can commit each statement on its own (PostgreSQL's can;
    SQLite's opens no transaction for a read and gains nothing)."""
    return conn.dialect.name == "postgresql"


@contextmanager
def autocommit(conn: Connection) -> Iterator[None]:
    """Inside, on PostgreSQL, each statement on ``conn`` commits on its own: a read needs no
    ``BEGIN`` or ``ROLLBACK``, and a single data-changing statement is its own atomic
    transaction. Use :func:`transaction` for several that must hold together, and for any
    write on SQLite, where nothing changes (its driver opens no transaction for a read, and
    one for a write that waits for a commit). The driver is set back before ``conn`` returns
    to the pool; a connection that cannot be set back is invalidated rather than handed to
    the next user as it is."""
    if not _on_its_own(conn):
        yield
        return
    driver = conn.connection.dbapi_connection
    assert driver is not None
    end_read(conn)  # the driver changes mode only outside a transaction
    driver.autocommit = True
    try:
        yield
    finally:
        if not conn.invalidated:
            try:
                end_read(conn)
                driver.autocommit = False
            except Exception as exc:
                conn.invalidate(exc)


@contextmanager
def transaction(conn: Connection) -> Iterator[None]:
    """``with conn.begin():`` that is a real transaction inside :func:`autocommit` as well."""
    driver = conn.connection.dbapi_connection
    switched = _on_its_own(conn) and driver is not None and bool(driver.autocommit)
    if switched:
        assert driver is not None
        driver.autocommit = False
    try:
        with conn.begin():
            yield
    finally:
        if switched and not conn.invalidated:
            assert driver is not None
            try:
                driver.autocommit = True
            except Exception as exc:
                conn.invalidate(exc)


def _wrapped(
    conn: Connection, exc: Any, sql: str, values: dict[str, Any] | None, cursor: Any
) -> StatementError:
    """``exc`` from the driver as SQLAlchemy raises it; a lost connection is invalidated
    first, as ``Connection.execute`` does (``cursor``, if any, is closed)."""
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if cursor is not None:
        cursor.close()
    if lost:
        conn.invalidate(exc)
    return DBAPIError.instance(
        sql,
        values,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
