"""Worker processes, studies and queue inspection for the worker's integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from services.core.broker import RabbitBroker
from services.core.db import Database, Finding, Job
from services.core.messages import REPORTING_QUEUE, STUDY_RESULT, StudyResult
from services.core.outbox import Relay
from services.core.storage import LocalStorage
from tests.factories.worker import SeededJob, queue_job, store_files

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Node:
    """The shared pieces one test's workers run against (real PostgreSQL and RabbitMQ)."""

    env: dict[str, str]
    db: Database
    broker: RabbitBroker
    storage: LocalStorage
    logs: Path
    procs: list[WorkerProc] = field(default_factory=list)

    def worker(self, name: str, **env: str) -> WorkerProc:
        proc = WorkerProc(name, {**self.env, **env}, self.logs / f"{name}.log")
        self.procs.append(proc)
        return proc

    def submit(self, files: Iterable[Path]) -> SeededJob:
        """Store and index ``files`` as the receiver would, queue a job and publish it."""
        study_uid, series = store_files(self.db, self.storage, list(files))
        seeded = queue_job(self.db, study_uid, series, outbox=True)
        Relay(self.db, self.broker).relay_once(message_id=seeded.job_id)
        return seeded

    def job(self, job_id: str) -> Job:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def findings(self, job_id: str) -> list[Finding]:
        with self.db.session() as session:
            rows = list(
                session.scalars(select(Finding).where(Finding.job_id == job_id).order_by("index"))
            )
            session.expunge_all()
            return rows

    def wait_job(self, job_id: str, until: Callable[[Job], bool], timeout: float = 120.0) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                logs = "\n".join(p.tail() for p in self.procs)
                raise AssertionError(f"job {job_id} stuck in {job.state} ({job.reason})\n{logs}")
            time.sleep(0.2)

    def wait_state(self, job_id: str, *states: str, timeout: float = 120.0) -> Job:
        return self.wait_job(job_id, lambda job: job.state in states, timeout)

    def results(self, timeout: float = 30.0) -> list[StudyResult]:
        """Once every StudyResult outbox row is published, drain the reporting queue (as
        the reporter would) and return its messages."""
        relay = Relay(self.db, self.broker, routing_key=STUDY_RESULT)
        deadline = time.monotonic() + timeout
        while relay.pending():
            if time.monotonic() > deadline:
                raise AssertionError(f"{relay.pending()} results never published")
            time.sleep(0.1)
        name = self.broker.topology.queue_for(REPORTING_QUEUE)
        conn = pika.BlockingConnection(self.broker.params)
        try:
            channel = conn.channel()
            out = []
            while True:
                method, _props, body = channel.basic_get(name, auto_ack=True)
                if method is None:
                    return out
                out.append(StudyResult.model_validate_json(body))
        finally:
            conn.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()


class WorkerProc:
    """``noduleflow worker`` as a child process, with its log in a file."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._handle,
            stderr=subprocess.STDOUT,
        )

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} in log\n{self.tail()}")
            time.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._handle.close()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (rc={self.proc.poll()}) ---\n" + "\n".join(text)


def clone_study(files: Iterable[Path], outdir: Path, **overrides: Any) -> list[Path]:
    """A copy of one series under new Study/Series/SOP UIDs (optionally changing attributes)."""
    outdir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for path in sorted(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in overrides.items():
            setattr(ds, keyword, value)
        target = outdir / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))
