#!/usr/bin/env python3
"""Container health check for noduleflow (stdlib only, so it stays cheap every 30 s).

Usage: ``noduleflow-healthcheck [receiver|worker|reporter|serve]``. Without an argument the
role is read from the command line of process 1 (``noduleflow <role>``). Exit 0 = healthy.

- receiver: the DICOM port accepts a TCP connection.
- reporter: ``GET /healthz`` answers 200.
- serve: both of the above.
- worker: no port of its own; a dead worker ends the container, and a stuck one is caught by
  the broker (heartbeats, consumer timeout), so the check only confirms the process exists.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path

ROLES = ("receiver", "worker", "reporter", "serve")
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - compared against, never bound


def _local(host: str) -> str:
    return "127.0.0.1" if host in WILDCARDS else host


def detect_role(cmdline: list[str]) -> str | None:
    """The first noduleflow role named on a command line."""
    for arg in cmdline:
        if arg in ROLES:
            return arg
    return None


def _pid1_cmdline() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def dicom_ok(timeout: float = 3.0) -> bool:
    host = _local(os.environ.get("NODULEFLOW_DICOM_HOST", "127.0.0.1"))
    port = int(os.environ.get("NODULEFLOW_DICOM_PORT", "11112"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(timeout: float = 3.0) -> bool:
    host = _local(os.environ.get("NODULEFLOW_API_HOST", "127.0.0.1"))
    port = int(os.environ.get("NODULEFLOW_API_PORT", "8000"))
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def check(role: str) -> bool:
    if role == "receiver":
        return dicom_ok()
    if role == "reporter":
        return http_ok()
    if role == "serve":
        return dicom_ok() and http_ok()
    return role == "worker"


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else detect_role(_pid1_cmdline())
    if role not in ROLES:
        print(f"healthcheck: unknown role {role!r}; pass one of {', '.join(ROLES)}")
        return 2
    healthy = check(role)
    print(f"healthcheck role={role} healthy={healthy}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
