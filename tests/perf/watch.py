"""What the benchmarks observe from outside the node while it works.

A :class:`Watcher` thread polls, every ``interval`` seconds: the job rows (states per study,
for queue depth), Orthanc's change log (when each result instance arrived, by study and
modality), the FHIR API (when each job's DiagnosticReport becomes readable) and, every
second, the resident memory and CPU time of every node process (and Orthanc's CPU time).
:func:`study_times` then joins those observations with the rows' own timestamps into a
:class:`~tests.perf.timeline.StudyTimes`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from sqlalchemy import func, select

from services.core.db import Delivery, Instance, Job, OutboxMessage, Series, Study
from tests.perf.node import Node, machine_cpu, process_cpu, process_memory
from tests.perf.timeline import StudyTimes, claim_times, epoch

_JOB_STATES = select(Job.id, Study.study_instance_uid, Job.state, Job.report_id).join(Study)


@dataclass
class JobSeen:
    job_id: str
    study_uid: str
    state: str
    report_id: str


@dataclass
class Watcher:
    node: Node
    interval: float = 0.2
    jobs: dict[str, JobSeen] = field(default_factory=dict)
    depth: list[tuple[float, Counter[str]]] = field(default_factory=list)
    arrivals: list[tuple[float, str, str]] = field(default_factory=list)  # t, study, modality
    fhir_readable: dict[str, float] = field(default_factory=dict)  # job id → t
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # service → samples
    peak_rss: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, pid) → bytes
    #: CPU seconds of each process (a node service's, or Orthanc's) when first and last seen
    cpu: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # polls that failed (and were retried)
    cpu_seconds: float = 0.0  # this thread's own CPU time: what watching costs the node
    #: the whole machine's (busy, total) CPU seconds from start to stop of the watch
    machine: tuple[float, float] = (0.0, 0.0)
    _since: int = 0
    _seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        self._since = int(self.node.pacs.get("/changes?last")["Last"])  # type: ignore[index]
        self.machine = machine_cpu()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        busy, total = machine_cpu()
        self.machine = (busy - self.machine[0], total - self.machine[1])

    def _run(self) -> None:
        started = time.thread_time()
        with httpx.Client(timeout=10) as client:
            next_memory, next_scan = 0.0, 0.0
            while not self._stop.is_set():
                now = time.time()
                try:
                    if now >= next_memory:  # the process list is scanned again every 10 s
                        self._memory(now, refresh=now >= next_scan)
                        next_memory = now + 1.0
                        next_scan = next_scan if now < next_scan else now + 10.0
                    self._jobs(now)
                    self._orthanc(client, now)
                    self._fhir(client)
                except Exception as exc:  # a slow Orthanc or database: try again next round
                    self.errors.append(f"{time.time() - now:.1f} s: {exc!r}")
                self.cpu_seconds = time.thread_time() - started
                self._stop.wait(self.interval)
            self._memory(time.time())

    def _memory(self, now: float, *, refresh: bool = True) -> None:
        for service, pids in self.node.pids(refresh=refresh).items():
            total = 0
            for pid in pids:
                self._cpu(service, pid)
                memory = process_memory(pid)
                total += memory.get("VmRSS", 0)
                key = (service, pid)
                self.peak_rss[key] = max(self.peak_rss.get(key, 0), memory.get("VmHWM", 0))
            self.rss.setdefault(service, []).append((now, float(total)))
        if self.node.pacs.process is not None:
            self._cpu("orthanc", self.node.pacs.process.pid)

    def _cpu(self, name: str, pid: int) -> None:
        used = process_cpu(pid)
        if used is not None:
            first = self.cpu.get((name, pid), (used, used))[0]
            self.cpu[(name, pid)] = (first, used)

    def cpu_seconds_by_service(self) -> dict[str, float]:
        """CPU each service (its processes together) used while watched."""
        totals: dict[str, float] = {}
        for (service, _), (first, last) in self.cpu.items():
            totals[service] = totals.get(service, 0.0) + last - first
        return totals

    def _jobs(self, now: float) -> None:
        with self.node.db.engine.connect() as conn:  # a plain read: no ORM session to set up
            rows = conn.execute(_JOB_STATES).all()
        counts: Counter[str] = Counter()
        for job_id, study_uid, state, report_id in rows:
            self.jobs[job_id] = JobSeen(job_id, study_uid, state, report_id or job_id)
            counts[state] += 1
        self.depth.append((now, counts))

    def _orthanc(self, client: httpx.Client, now: float) -> None:
        pacs = self.node.pacs.url
        while True:
            page = client.get(f"{pacs}/changes", params={"since": self._since, "limit": 200})
            page.raise_for_status()
            body = page.json()
            for change in body["Changes"]:
                if change["ChangeType"] == "NewInstance" and change["ID"] not in self._seen:
                    tags = client.get(f"{pacs}/instances/{change['ID']}/simplified-tags").json()
                    self.arrivals.append((now, tags["StudyInstanceUID"], tags["Modality"]))
                    self._seen.add(change["ID"])  # a page retried after an error counts once
            self._since = int(body["Last"])
            if body["Done"]:
                return

    def _fhir(self, client: httpx.Client) -> None:
        for job in list(self.jobs.values()):
            if job.job_id in self.fhir_readable or job.state not in ("reporting", "done"):
                continue
            answer = client.get(
                f"{self.node.api_url}/fhir/DiagnosticReport/{job.report_id}",
                headers={"Accept": "application/fhir+json"},
            )
            if answer.status_code == 200:
                self.fhir_readable[job.job_id] = time.time()


def study_times(node: Node, watcher: Watcher, study_uid: str) -> StudyTimes:
    """The timeline of ``study_uid``'s one job, from its rows and the watcher's sightings."""
    with node.db.session() as session:
        last_ack = session.scalar(
            select(func.max(Instance.received_at))
            .join(Series)
            .join(Study)
            .where(Study.study_instance_uid == study_uid)
        )
        job = session.scalars(
            select(Job).join(Study).where(Study.study_instance_uid == study_uid)
        ).one()
        published = session.scalar(
            select(OutboxMessage.published_at).where(
                OutboxMessage.message_id == job.id, OutboxMessage.routing_key == "study.ready"
            )
        )
        expected = session.scalar(  # count(*) is never NULL
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.job_id == job.id, Delivery.target == node.pacs.address)
        )
        if last_ack is None or published is None or job.finished_at is None or not expected:
            raise RuntimeError(f"study {study_uid} has no complete timeline (job {job.state})")
        created, finished = epoch(job.created_at), epoch(job.finished_at)
        start, end = claim_times(created, job.timings)
        report = float(job.timings.get("report", 0.0))
        job_id = job.id
    seen = sorted(t for t, uid, _ in watcher.arrivals if uid == study_uid)
    sr = [t for t, uid, modality in watcher.arrivals if uid == study_uid and modality == "SR"]
    if not sr or len(seen) < expected or job_id not in watcher.fhir_readable:
        raise RuntimeError(f"study {study_uid}: results not all seen in Orthanc and FHIR")
    return StudyTimes(
        last_ack=epoch(last_ack),
        complete=created,
        queued=epoch(published),
        analysis_start=start,
        analysis_end=end,
        report_start=finished - report,
        done=finished,
        sr_in_pacs=min(sr),
        all_in_pacs=seen[expected - 1],
        fhir_readable=watcher.fhir_readable[job_id],
    )
