"""Shared fixtures: settings, databases (SQLite and a fresh PostgreSQL database), brokers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from services.core.broker import InProcessBroker, RabbitBroker, Topology, delete_topology
from services.core.db import Database
from services.core.settings import Settings
from tests.services import PG_ADMIN_URL, RABBIT_URL, port_open, require, unique


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'noduleflow.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    name = unique("nf_")
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both database back ends, for tests that must hold on each."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'noduleflow.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def rabbit_url() -> str:
    require(port_open("127.0.0.1", 5672), "RabbitMQ on 127.0.0.1:5672")
    return RABBIT_URL


@pytest.fixture
def rabbit_prefix(rabbit_url: str) -> Iterator[str]:
    """A unique exchange/queue prefix for this test; its queues are deleted afterwards."""
    prefix = unique("nftest.")
    yield prefix
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
        channel = conn.channel()
        delete_topology(channel, Topology(prefix=prefix))
        conn.close()
    except Exception:
        pass


@pytest.fixture
def rabbit_broker(rabbit_url: str, rabbit_prefix: str) -> Iterator[RabbitBroker]:
    broker = RabbitBroker(rabbit_url, Topology(prefix=rabbit_prefix), retry_delay=0.1)
    broker.declare()
    yield broker
    broker.close()


@pytest.fixture
def inprocess_broker() -> InProcessBroker:
    return InProcessBroker(retry_delay=0.01)


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    """Settings isolated in ``tmp_path`` (SQLite, in-process broker, local storage)."""
    return Settings(
        database_url=sqlite_url,
        broker_url="",
        storage_dir=tmp_path / "storage",
        outbox_dir=tmp_path / "outbox",
        study_idle_seconds=2.0,
        release_grace_seconds=0.5,
    )


@pytest.fixture(autouse=True)
def _plain_pynetdicom() -> Iterator[None]:
    """A receiver started by a test switches this process's pynetdicom to its fast path
    (process-wide); SCPs that stand in for a foreign PACS in later tests need plain
    pynetdicom, so every original attribute is put back after each test."""
    from services.receiver import fast

    yield
    fast.uninstall()
