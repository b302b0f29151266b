"""A real FHIR R4 server for tests: Medplum's router with its in-memory repository (Node)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.services import free_port, require, wait_port

HERE = Path(__file__).resolve().parent


def ensure_installed() -> None:
    """``npm ci`` on first use (node_modules is not committed)."""
    require(shutil.which("node") is not None and shutil.which("npm") is not None, "node and npm")
    if (HERE / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    require(result.returncode == 0, f"npm ci for the Medplum test server: {result.stderr[-500:]}")


@contextmanager
def running_medplum(
    log_path: Path, *, admin_token: str = "", token_ttl: int = 3600
) -> Iterator[str]:
    """Start the server on a free port; yields its FHIR base URL; stops it afterwards.

    With ``admin_token``, FHIR requests need a bearer token from ``/oauth2/token`` that lives
    ``token_ttl`` seconds; clients are made with :func:`create_client`.
    """
    ensure_installed()
    port = free_port()
    command = ["node", "--experimental-websocket", str(HERE / "server.mjs"), str(port)]
    if admin_token:
        command += ["--auth", admin_token, "--token-ttl", str(token_ttl)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=HERE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_port("127.0.0.1", port, timeout=60):
            proc.kill()
            raise RuntimeError(f"Medplum test server did not start: {log_path.read_text()[-800:]}")
        yield f"http://127.0.0.1:{port}/fhir/R4"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_root(fhir_base: str) -> str:
    """``http://host:port`` of a FHIR base URL from :func:`running_medplum`."""
    return fhir_base.removesuffix("/fhir/R4")


def create_client(
    fhir_base: str, admin_token: str, name: str, jwks_uri: str = ""
) -> dict[str, Any]:
    """A ClientApplication made through the admin API, as Medplum's admin API makes one:
    the answer carries its ``id`` (the client id) and generated ``secret``."""
    body = {"name": name, **({"jwksUri": jwks_uri} if jwks_uri else {})}
    response = httpx.post(
        f"{server_root(fhir_base)}/admin/projects/default/client",
        json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    response.raise_for_status()
    client: dict[str, Any] = response.json()
    return client


def admin(fhir_base: str, admin_token: str, method: str, path: str) -> dict[str, Any]:
    """A test hook of the server's admin API (``revoke-tokens``, ``stats``)."""
    response = httpx.request(
        method,
        f"{server_root(fhir_base)}/admin/{path}",
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer
