"""Structured logging: one ``key=value`` event per line, no patient identifiers."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", service: str = "noduleflow") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"ts=%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
            "%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pika", "pynetdicom", "alembic", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
