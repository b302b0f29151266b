"""Start a real Orthanc (Debian package) on free ports: a plain test PACS, or the shipped
``deploy/orthanc`` configuration and auto-routing script changed only where a test must."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.integration.deploy.repo import ORTHANC_DIR
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
    auth: tuple[str, str] | None = None  # the REST API's user, when it asks for one
    env: dict[str, str] = field(default_factory=dict)  # e.g. secrets its configuration reads

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
        env = {**os.environ, **self.env, "TCP_NODELAY": "1"}
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
        response = httpx.get(self.url + path, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        response = httpx.get(self.url + path, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.content

    def post(self, path: str, body: object) -> object:
        response = httpx.post(self.url + path, json=body, auth=self.auth, timeout=60)
        response.raise_for_status()
        return response.json()

    def lookup(self, uid: str) -> list[dict[str, str]]:
        """``/tools/lookup``: the resources (patient, study, series, instance) with ``uid``."""
        response = httpx.post(self.url + "/tools/lookup", content=uid, auth=self.auth, timeout=30)
        response.raise_for_status()
        found: list[dict[str, str]] = response.json()
        return found

    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")

    def storescu(
        self, calling: str, files: Sequence[Path], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """DCMTK ``storescu`` from ``calling`` to this Orthanc, one association."""
        exe = require_tool("storescu")
        args = [exe, "-R", "-aet", calling, "-aec", self.aet, "127.0.0.1", str(self.dicom_port)]
        return subprocess.run(
            [*args, *map(str, files)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

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


def deploy_config(
    workdir: Path,
    *,
    dicom_port: int,
    http_port: int,
    noduleflow_port: int,
    lua: Path = ORTHANC_DIR / "autoroute.lua",
) -> dict[str, object]:
    """``deploy/orthanc/orthanc.json`` with what a test must change: free ports, temporary
    folders, the path of ``autoroute.lua`` (``lua``: a test's changed copy), and the
    ``noduleflow`` and ``ct-scanner`` modalities on this machine (``noduleflow_port`` is
    where the receiver listens)."""
    config: dict[str, object] = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
    config |= {
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "LuaScripts": [str(lua)],
    }
    modalities = config["DicomModalities"]
    assert isinstance(modalities, dict)
    modalities["noduleflow"] |= {"Host": "127.0.0.1", "Port": noduleflow_port}
    modalities["ct-scanner"] |= {"Host": "127.0.0.1"}
    return config


@contextmanager
def running_deploy_orthanc(
    workdir: Path, *, noduleflow_port: int, password: str, lua: Path | None = None
) -> Iterator[Orthanc]:
    """The shipped routing Orthanc on free ports (REST API as ``admin``/``password``),
    stopped on exit; ``lua`` replaces ``autoroute.lua``."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = deploy_config(
        workdir,
        dicom_port=dicom_port,
        http_port=http_port,
        noduleflow_port=noduleflow_port,
        lua=lua or ORTHANC_DIR / "autoroute.lua",
    )
    aet = str(config["DicomAet"])
    server = Orthanc(
        aet,
        dicom_port,
        http_port,
        workdir,
        config,
        auth=("admin", password),
        env={"ORTHANC_ADMIN_PASSWORD": password},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
