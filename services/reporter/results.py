"""Consumer of ``noduleflow.reporting``: turns a finished job into DICOM artefacts and
delivery rows, idempotently by job id, and acknowledges only after the commit.

* ``done``: build SEG, key images and SR (deterministic UIDs, so a redelivered message
  rebuilds the same instances), create the Delivery rows, set the job ``done``
  (finished_at, timings["report"], its report version: :mod:`services.reporter.versions`)
  and audit 110110 "report created", in one commit.
* ``failed`` / ``skipped``: the worker recorded the job's end in the same commit that queued
  the message (one writer per state), so the job is final: nothing to do, no report.
* A job already in a final state: acknowledged without side effects.
* A result that contradicts the database (not ``done``, job not final) cannot happen while the
  worker is the only writer of ``failed``/``skipped``; it is dead-lettered for a person to see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.core import audit
from services.core.broker import Delivered, Verdict
from services.core.db import Database, Job, JobState
from services.core.errors import PermanentError, TransientError
from services.core.messages import StudyResult
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.reporter.delivery.dispatch import FHIR, HL7, upsert_delivery
from services.reporter.delivery.pacs import destinations
from services.reporter.dicom.artefacts import (
    Artefact,
    artefact_dir,
    outbox_relative,
    write_artefacts,
)
from services.reporter.dicom.inputs import load_inputs
from services.reporter.versions import place

log = logging.getLogger(__name__)


class ResultConsumer:
    """The ``study.result`` handler; ``on_committed`` is called after new deliveries."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.storage = LocalStorage(settings.storage_dir)
        self.on_committed = on_committed

    def handle(self, delivered: Delivered) -> Verdict:
        try:
            message = StudyResult.model_validate_json(delivered.body)
        except ValidationError:
            log.error("event=result_invalid message_id=%s", delivered.message_id)
            return Verdict.REJECT
        with self.db.session() as session:
            job = session.get(Job, message.job_id)
            if job is None:
                log.error("event=result_unknown_job job=%s", message.job_id)
                return Verdict.REJECT
            if JobState(job.state).final:
                log.info("event=result_duplicate job=%s state=%s", job.id, job.state)
                return Verdict.ACK
        if message.status != "done":
            log.error(
                "event=result_state_mismatch job=%s status=%s note=the worker records the end "
                "before it publishes; the job should be final",
                message.job_id,
                message.status,
            )
            return Verdict.REJECT
        return self._report(message)

    def _report(self, message: StudyResult) -> Verdict:
        started = time.perf_counter()
        try:
            with self.db.session() as session:
                job = session.get(Job, message.job_id)
                assert job is not None
                inputs = load_inputs(session, self.storage, job)
            artefacts = write_artefacts(self.settings, inputs)
        except (PermanentError, ValueError) as exc:  # ValueError: the builders' validation
            return self._fail(message.job_id, f"report not built: {exc}")
        except (TransientError, OSError, SQLAlchemyError):
            raise  # transient (disk, database): the broker redelivers
        except Exception as exc:  # a builder bug must not leave the job in "reporting"
            log.exception("event=report_build_crashed job=%s", message.job_id)
            return self._fail(message.job_id, f"report not built: {exc.__class__.__name__}")
        with self.db.session() as session:
            job = session.scalar(select(Job).where(Job.id == message.job_id).with_for_update())
            if job is None or JobState(job.state).final:
                return Verdict.ACK
            self._create_deliveries(session, job, artefacts)
            elapsed = time.perf_counter() - started
            job.state = JobState.DONE.value
            job.reason = ""
            job.finished_at = datetime.now(UTC)
            job.timings = {**(job.timings or {}), "report": round(elapsed, 3)}
            job.findings_count = len(inputs.findings)
            placement = place(session, job, job.finished_at)
            audit.record(
                session,
                audit.REPORT_CREATED,
                actor="noduleflow-reporter",
                action="C",
                object_type="job",
                object_id=job.id,
                detail=f"version {job.version}, {len(inputs.findings)} findings, "
                f"{len(artefacts)} instances, report {placement.report_id} "
                f"v{placement.version or '-'}",
            )
        log.info(
            "event=report_created job=%s version=%s report=%s report_version=%s findings=%s "
            "seconds=%.2f",
            message.job_id,
            inputs.version,
            placement.report_id,
            placement.version,
            len(inputs.findings),
            elapsed,
        )
        if self.on_committed is not None:
            self.on_committed()
        return Verdict.ACK

    def _create_deliveries(self, session: Session, job: Job, artefacts: list[Artefact]) -> None:
        """One row per (artefact, destination): each PACS or VNA is sent to and retried on
        its own; with no destination the outbox folder is the delivery (``written``)."""
        targets = [str(d) for d in destinations(self.settings.pacs)]
        folder = artefact_dir(self.settings, job.study.study_instance_uid, job.version)
        for artefact in artefacts:
            for target in targets or [str(folder)]:
                upsert_delivery(
                    session,
                    job_id=job.id,
                    kind=artefact.kind,
                    target=target,
                    path=outbox_relative(self.settings, artefact.path),
                    sop_instance_uid=artefact.sop_instance_uid,
                    written=not targets,
                )
        if self.settings.fhir_push_url:
            upsert_delivery(
                session,
                job_id=job.id,
                kind=FHIR,
                target=self.settings.fhir_push_url,
            )
        if self.settings.hl7_peer:
            upsert_delivery(session, job_id=job.id, kind=HL7, target=self.settings.hl7_peer)

    def rebuild(self, job_id: str) -> list[Artefact]:
        """Write a finished job's artefacts again (same UIDs), e.g. when the outbox lost
        them; the rows and job state are left as they are."""
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return []
            inputs = load_inputs(session, self.storage, job)
        return write_artefacts(self.settings, inputs)

    def _fail(self, job_id: str, reason: str) -> Verdict:
        """A job whose report cannot be built: failed with the reason, no SR."""
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is not None and not JobState(job.state).final:
                job.state = JobState.FAILED.value
                job.reason = reason[:2000]
                job.finished_at = datetime.now(UTC)
        log.error("event=report_failed job=%s reason=%s", job_id, reason)
        return Verdict.ACK
