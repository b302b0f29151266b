"""Start a real Orthanc (Debian package) on free ports with its own configuration."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.services import free_port, require_tool, wait_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    config: dict[str, object]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        """``AET@host:port`` as noduleflow's ``PACS`` setting wants it."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> None:
        exe = require_tool("Orthanc")
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        log = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen([exe, str(config_path)], stdout=log, stderr=log, env=env)
        if not (wait_port("127.0.0.1", self.http_port) and wait_port("127.0.0.1", self.dicom_port)):
            self.stop()
            raise RuntimeError(f"Orthanc did not start; see {self.workdir / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str) -> object:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: object) -> object:
        response = httpx.post(self.url + path, json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def instance_count(self) -> int:
        stats = self.get("/statistics")
        assert isinstance(stats, dict)
        return int(stats["CountInstances"])

    def wait_instances(self, count: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.instance_count()
            if current >= count:
                return current
            time.sleep(0.2)
        return self.instance_count()


def orthanc_config(
    workdir: Path,
    *,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: dict[str, list[object]] | None = None,
    lua_scripts: list[str] | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    config: dict[str, object] = {
        "Name": "noduleflow-test-pacs",
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "LuaScripts": lua_scripts or [],
        "StableAge": 2,
        "HttpTimeout": 60,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
    }
    config.update(extra or {})  # e.g. "DicomWeb": {"Servers": ...} for STOW-RS pushes
    return config


@contextmanager
def running_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, list[object]] | None = None,
    lua_scripts: list[str] | None = None,
    extra: dict[str, object] | None = None,
) -> Iterator[Orthanc]:
    """An Orthanc on free ports, stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = orthanc_config(
        workdir,
        aet=aet,
        dicom_port=dicom_port,
        http_port=http_port,
        modalities=modalities,
        lua_scripts=lua_scripts,
        extra=extra,
    )
    server = Orthanc(aet, dicom_port, http_port, workdir, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
