"""One uvicorn server for the reporter app: ``noduleflow reporter`` and ``serve`` build it alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services import serve
from services.core.broker import InProcessBroker
from services.core.db import Database
from services.core.settings import Settings
from services.reporter import main
from services.reporter.api import server as server_module
from services.reporter.api.app import create_app
from services.reporter.api.server import build_server
from tests.services import free_port, wait_port


def test_config_has_no_server_header(db: Database, settings: Settings) -> None:
    server = build_server(create_app(settings, db), settings)
    config = server.config
    assert (config.host, config.port) == (settings.api_host, settings.api_port)
    assert config.server_header is False
    assert config.date_header is True
    assert config.access_log is False
    assert config.log_config is None  # our setup_logging stays in charge
    config.load()
    assert b"server" not in dict(config.encoded_headers)


def test_served_response_has_date_but_no_server_header(db: Database, settings: Settings) -> None:
    settings = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    server = build_server(create_app(settings, db), settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_port(settings.api_host, settings.api_port, timeout=20)
        res = httpx.get(f"http://{settings.api_host}:{settings.api_port}/healthz", timeout=10)
        assert res.status_code == 200
        assert "server" not in res.headers
        assert res.headers["date"].endswith(" GMT")
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


class _Spy:
    """Stands in for ``build_server``: records the call, returns a server that does nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Settings]] = []
        self.server = _StubServer()

    def __call__(self, app: Any, settings: Settings) -> Any:
        self.calls.append((app, settings))
        return self.server


class _StubServer:
    should_exit = False

    def run(self) -> None:
        return None


def _standalone(settings: Settings, db: Database, broker: InProcessBroker) -> Any:
    return main.http_server(settings, db, broker)


def _serve(settings: Settings, db: Database, broker: InProcessBroker) -> Any:
    node = serve.Node(settings=settings, db=db, broker=broker)
    serve._start_http(node)
    assert node.http_thread is not None
    node.http_thread.join(5)
    return node.http


@pytest.mark.parametrize("start", [_standalone, _serve], ids=["reporter", "serve"])
def test_both_entry_points_use_build_server(
    start: Callable[[Settings, Database, InProcessBroker], Any],
    db: Database,
    settings: Settings,
    inprocess_broker: InProcessBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = _Spy()
    monkeypatch.setattr(server_module, "build_server", spy)
    assert start(settings, db, inprocess_broker) is spy.server
    assert len(spy.calls) == 1
    app, used = spy.calls[0]
    assert isinstance(app, FastAPI)
    assert used is settings


def test_standalone_server_is_the_shared_one(db: Database, settings: Settings) -> None:
    server = main.http_server(settings, db, None)
    assert isinstance(server, uvicorn.Server)
    assert server.config.server_header is False and server.config.date_header is True
