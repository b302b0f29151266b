"""Reaching the real services in tests: skip locally when one is absent, fail under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

RABBIT_URL = os.environ.get("NODULEFLOW_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_ADMIN_URL = os.environ.get(
    "NODULEFLOW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip when ``condition`` is false, unless running under CI, where it fails."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required service missing under CI=true: {what}")
    pytest.skip(f"service not available: {what}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.05)
    return False


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"command {name}")
    assert path is not None
    return path


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def rabbitmqctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
