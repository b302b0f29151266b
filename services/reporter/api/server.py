"""The one uvicorn server for the reporter app, shared by ``noduleflow reporter`` and ``serve``.

- no ``server`` header (the version of the HTTP stack is nobody's business), a ``date``
  header as HTTP requires;
- uvicorn leaves logging alone (``log_config=None``): its records go through the handlers
  ``setup_logging`` installed, in the same ``key=value`` format, at ``LOG_LEVEL``;
- no access log: reads of patient data are audited in the database instead.

The caller runs ``server.run`` in a thread and stops it with ``server.should_exit = True``;
signals are the caller's (uvicorn installs none off the main thread).
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from services.core.settings import Settings


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for ``app`` on ``API_HOST:API_PORT``."""
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
    )


def build_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """A uvicorn server for ``app``, not yet running."""
    return uvicorn.Server(server_config(app, settings))
