"""What one chaos run owns outside its processes: a fresh PostgreSQL database, a RabbitMQ
prefix, the stub model and the work folder; all removed by :meth:`World.close`."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import create_engine, text

from services.core.broker import Topology, delete_topology
from services.core.db import Database
from tests.integration.worker.stub_model import write_stub_model
from tests.services import PG_ADMIN_URL, RABBIT_URL, port_open, unique


def _with_port(url: str, port: int, path: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if ":" in parts.netloc.split("@")[-1] else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}", path=path or parts.path))


@dataclass
class World:
    workdir: Path
    db_name: str
    prefix: str
    db: Database
    model_dir: Path
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    @staticmethod
    def missing() -> list[str]:
        out = []
        for what, url in (("PostgreSQL", PG_ADMIN_URL), ("RabbitMQ", RABBIT_URL)):
            parts = urlsplit(url)
            if not port_open(parts.hostname or "127.0.0.1", parts.port or 0):
                out.append(f"{what} at {parts.hostname}:{parts.port}")
        if shutil.which("storescp") is None:
            out.append("DCMTK storescp")
        return out

    @classmethod
    def create(cls, workdir: Path) -> World:
        workdir.mkdir(parents=True, exist_ok=True)
        name = unique("nf_chaos_")
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        db = Database(_with_port(PG_ADMIN_URL, cls.pg_port(), f"/{name}"))
        db.upgrade()
        model = write_stub_model(workdir / "model")
        return cls(workdir, name, unique("nfchaos."), db, model)

    @staticmethod
    def pg_port() -> int:
        return urlsplit(PG_ADMIN_URL).port or 5432

    @property
    def db_port(self) -> int:
        return self.pg_port()

    @property
    def broker_port(self) -> int:
        return urlsplit(RABBIT_URL).port or 5672

    def database_url(self, port: int) -> str:
        return _with_port(PG_ADMIN_URL, port, f"/{self.db_name}")

    def broker_url(self, port: int) -> str:
        return _with_port(RABBIT_URL, port)

    def on_close(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    @staticmethod
    def part_files(root: Path) -> list[str]:
        """Temporary files left under ``root`` (relative paths)."""
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))

    def close(self, keep: bool = False) -> None:
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.db.dispose()
        if keep:
            return
        with contextlib.suppress(Exception):
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
            delete_topology(conn.channel(), Topology(prefix=self.prefix))
            conn.close()
        with contextlib.suppress(Exception):
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": self.db_name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}"'))
            admin.dispose()
        shutil.rmtree(self.workdir, ignore_errors=True)
