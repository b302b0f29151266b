"""The distributed form under test: ``noduleflow receiver`` ×2, ``worker`` ×2, ``reporter``,
a DCMTK ``storescp`` as the PACS, RabbitMQ and PostgreSQL behind cuttable proxies, and
storage on a small volume that can be filled.

Each service is a process group of its own, restarted by :meth:`Cluster.supervise` when it
is gone (as an orchestrator would): SIGKILL comes from the schedule, and a process that
exits by itself (a start while the database is cut) is restarted and counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.disk import Volume
from tests.chaos.proxy import CuttableProxy
from tests.services import free_port, require_tool, wait_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    """One service process (its whole group), its log and what happened to it."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None  # a listening port to wait for after a start
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    unplanned_exits: int = 0
    restart_at: float | None = None  # monotonic time of the restart after a kill
    exit_reasons: list[str] = field(default_factory=list)  # last error line of each

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.restart_at = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, restart_after: float) -> None:
        """SIGKILL the whole process group (a receiver's SCP children too)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.kills += 1
        self.restart_at = time.monotonic() + restart_after

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Pacs:
    """DCMTK ``storescp``: receives what the reporter delivers, one file per instance."""

    folder: Path
    log: Path
    aet: str = "CHAOSPACS"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = require_tool("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [exe, "-aet", self.aet, "-od", str(self.folder), "+B", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_port("127.0.0.1", self.port):
            raise RuntimeError("storescp did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class Cluster:
    services: dict[str, Service]
    broker_proxy: CuttableProxy
    db_proxy: CuttableProxy
    volume: Volume
    pacs: Pacs
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def of(self, role: str) -> list[Service]:
        return [s for name, s in sorted(self.services.items()) if name.startswith(role)]

    @property
    def receiver_ports(self) -> list[int]:
        return [int(s.port) for s in self.of("receiver") if s.port is not None]

    def start(self, timeout: float = 120.0) -> None:
        self.pacs.start()
        for service in self.services.values():
            service.start()
        deadline = time.monotonic() + timeout
        for service in self.services.values():
            while service.port is not None and not wait_port("127.0.0.1", service.port, 0.5):
                if not service.alive:
                    raise RuntimeError(f"{service.name} exited: {last_error(service.log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service.name} did not listen on {service.port}")
        self._thread = threading.Thread(target=self._supervise, name="supervise", daemon=True)
        self._thread.start()

    def kill(self, name: str, restart_after: float) -> None:
        with self._lock:
            self.services[name].kill(restart_after)

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                now = time.monotonic()
                for service in self.services.values():
                    if service.alive:
                        continue
                    if service.restart_at is None:  # it went by itself: restart at once
                        service.unplanned_exits += 1
                        service.exit_reasons.append(last_error(service.log))
                        service.restart_at = now + 1.0
                    if now >= service.restart_at:
                        service.start()

    def all_alive(self) -> bool:
        with self._lock:
            return all(s.alive for s in self.services.values())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for service in self.services.values():
            service.stop()
        self.pacs.stop()
        self.broker_proxy.close()
        self.db_proxy.close()


_ERROR_LINE = re.compile(r"^[\w.]*(?:Error|Exception)\b.*$", re.MULTILINE)


def last_error(log: Path, tail: int = 16384) -> str:
    """The last ``SomethingError: …`` line near the end of ``log`` (why a process exited)."""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail))
        text = handle.read().decode(errors="replace")
    found = _ERROR_LINE.findall(text)
    return found[-1].strip()[:160] if found else "no error line"


def service_env(
    *,
    database_url: str,
    broker_url: str,
    prefix: str,
    storage: Path,
    outbox: Path,
    model_dir: Path,
    pacs: str,
    min_free_disk_mb: int,
) -> dict[str, str]:
    """The environment every service of the node shares (docs/operations.md settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODULEFLOW_")}
    env.pop("PYTHONWARNINGS", None)
    env.update(
        {
            "NODULEFLOW_DATABASE_URL": database_url,
            "NODULEFLOW_BROKER_URL": broker_url,
            "NODULEFLOW_BROKER_PREFIX": prefix,
            "NODULEFLOW_STORAGE_DIR": str(storage),
            "NODULEFLOW_OUTBOX_DIR": str(outbox),
            "NODULEFLOW_MODEL_DIR": str(model_dir),
            "NODULEFLOW_PROVIDERS": "cpu",
            "NODULEFLOW_PACS": pacs,
            "NODULEFLOW_STUDY_IDLE_SECONDS": "3",
            "NODULEFLOW_RELEASE_GRACE_SECONDS": "0.5",
            "NODULEFLOW_RECEIVER_PROCESSES": "1",
            "NODULEFLOW_MIN_FREE_DISK_MB": str(min_free_disk_mb),
            "NODULEFLOW_JOB_MAX_ATTEMPTS": "4",
            "NODULEFLOW_DELIVERY_BACKOFF_SECONDS": "1",
            "NODULEFLOW_LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def make_services(
    env: dict[str, str], logs: Path, *, workers: int, receivers: int
) -> list[Service]:
    cli = [sys.executable, "-m", "services.cli"]
    out = []
    for i in range(receivers):
        port = free_port()
        renv = {**env, "NODULEFLOW_DICOM_PORT": str(port)}
        out.append(
            Service(f"receiver-{i}", [*cli, "receiver"], renv, logs / f"receiver-{i}.log", port)
        )
    for i in range(workers):
        out.append(Service(f"worker-{i}", [*cli, "worker"], env, logs / f"worker-{i}.log"))
    api = {**env, "NODULEFLOW_API_PORT": str(free_port())}
    out.append(Service("reporter-0", [*cli, "reporter"], api, logs / "reporter-0.log"))
    return out
