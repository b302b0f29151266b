"""Engine and session factory; SQLite gets WAL and a busy timeout, PostgreSQL a pool."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from services.core.backoff import Backoff
from services.core.errors import is_db_unavailable

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).with_name("migrations")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; creates the SQLite file's folder when needed."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_size=10, max_overflow=20)
    _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection unused for longer than this is tested before it is handed out.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for a connection that sat idle in the pool.

    SQLAlchemy's own pre-ping sends ``SELECT 1`` at every checkout: a round trip per
    statement group, a tenth of the receiver's time per image. A connection back in use
    within ``PING_AFTER_IDLE_SECONDS`` skips it; should the server have gone in that moment,
    the statement fails as in any outage (callers wait or answer failure; nothing
    acknowledged is lost) and SQLAlchemy invalidates the pool. A dead idle connection is
    replaced at checkout, as with pre-ping.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")  # none on a fresh connection
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection dead after idling: {exc}") from exc


class Database:
    """Owns the engine and hands out sessions; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        upgrade(self.url, engine=self.engine)

    def wait_until_available(
        self, stop: threading.Event, *, first: float = 1.0, cap: float = 30.0
    ) -> bool:
        """Block until the database answers (``core.backoff``: ``first`` s doubling up to
        ``cap``), logging one line per failed attempt; False when ``stop`` is set first.
        Errors other than unavailability (a wrong URL scheme, a bad password) are raised."""
        backoff = Backoff(first, cap)
        while not stop.is_set():
            try:
                with self.engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except Exception as exc:
                if not is_db_unavailable(exc):
                    raise
                delay = backoff.failed()
                log.warning(
                    "event=database_unavailable attempt=%d retry_in=%.1fs error=%s",
                    backoff.failures,
                    delay,
                    type(getattr(exc, "orig", None) or exc).__name__,
                )
                stop.wait(delay)
                continue
            if backoff.failures:
                log.info("event=database_available after_attempts=%d", backoff.failures)
            return True
        return False

    def dispose(self) -> None:
        self.engine.dispose()


def wait_for_database(db: Database) -> bool:
    """A service's start: :meth:`Database.wait_until_available`, ended by SIGTERM or SIGINT
    (False: stop, nothing started). Must run in the main thread; the signal handlers that
    were there are put back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        return db.wait_until_available(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


#: PostgreSQL advisory lock key of schema upgrades (an arbitrary bigint, "nfmigr").
MIGRATION_LOCK = 0x6E66_6D69_6772


def upgrade(url: str, *, engine: Engine | None = None) -> None:
    """Bring the schema at ``url`` to the newest migration.

    On PostgreSQL the upgrade runs under a transaction-scoped advisory lock, so services
    starting together (two receivers, a reporter and the migration job) upgrade one after
    the other: the first migrates, the others find the schema current."""
    config = alembic_config(url)
    owned = engine is None
    engine = engine if engine is not None else make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if owned:
            engine.dispose()
