"""A real FHIR R4 server for tests: Medplum's router with its in-memory repository (Node)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
def running_medplum(log_path: Path) -> Iterator[str]:
    """Start the server on a free port; yields its FHIR base URL; stops it afterwards."""
    ensure_installed()
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["node", "--experimental-websocket", str(HERE / "server.mjs"), str(port)],
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
