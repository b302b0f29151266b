"""PostgreSQL pool: a connection that idled is tested at checkout, one in steady use is not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from services.core.db import session as db_session
from services.core.db.session import make_engine
from tests.services import PG_ADMIN_URL

pytestmark = pytest.mark.integration


def _backend(engine: Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        admin.dispose()


@contextmanager
def _engine(url: str, monkeypatch: pytest.MonkeyPatch, ping_after: float) -> Iterator[Engine]:
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", ping_after)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_a_connection_killed_while_idle_is_replaced_at_checkout(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _engine(postgres_url, monkeypatch, 0.05) as engine:
        first = _backend(engine)
        _terminate(first)  # as a database restart does to every pooled connection
        time.sleep(0.2)
        second = _backend(engine)  # no error reaches the caller
        assert second != first


def test_a_connection_in_steady_use_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _engine(postgres_url, monkeypatch, 60.0) as engine:
        pings: list[object] = []
        original = engine.dialect.do_ping
        monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or original(c))
        first = _backend(engine)
        assert [_backend(engine) for _ in range(20)] == [first] * 20
        assert pings == []
        _terminate(first)  # within the window the dead connection is only found by use
        with pytest.raises(OperationalError):
            _backend(engine)
        assert _backend(engine) != first  # and the pool replaced it
