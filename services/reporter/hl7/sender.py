"""The ``hl7`` delivery: the job's ORU^R01 to ``NODULEFLOW_HL7_PEER`` over MLLP, its ACK
recorded on the delivery row (``last_status`` = MSA-1, the detail names the message and
the peer's reason)."""

from __future__ import annotations

import logging

from hl7apy.exceptions import HL7apyException
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.db import Database, Finding, Job, JobState
from services.core.settings import Settings
from services.reporter.delivery.dispatch import DeliveryTask, Sender, SendOutcome
from services.reporter.fhir.patient import mrn_system
from services.reporter.hl7.ack import classify_ack
from services.reporter.hl7.mllp import MllpError, Peer, exchange
from services.reporter.hl7.oru import Endpoints, OruInput, build_oru, control_id

log = logging.getLogger(__name__)


def load_input(session: Session, job_id: str, default_mrn_system: str = "") -> OruInput | None:
    """The ORU's input for a finished job; ``corrected`` when an earlier version of the
    study's analysis finished before it. The MRN's system is the FHIR Patient's
    (``NODULEFLOW_MRN_SYSTEM`` as ``default_mrn_system`` unless the issuer names one)."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.DONE.value:
        return None
    study = job.study
    earlier = session.scalar(
        select(Job.id)
        .where(Job.study_id == study.id, Job.state == JobState.DONE.value)
        .where(Job.version < job.version)
        .limit(1)
    )
    findings = session.scalars(
        select(Finding).where(Finding.job_id == job.id).order_by(Finding.index)
    )
    model = job.model_identity
    return OruInput(
        job_id=job.id,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        birth_date=study.patient_birth_date,
        sex=study.patient_sex,
        accession_number=study.accession_number,
        study_instance_uid=study.study_instance_uid,
        study_date=study.study_date,
        study_time=study.study_time,
        reported_at=job.finished_at or job.updated_at,
        findings=[f.to_contract() for f in findings],
        corrected=earlier is not None,
        model=f"{model.name} {model.version}",
        patient_id_issuer=study.issuer_of_patient_id,
        mrn_system=mrn_system(study, default_mrn_system),
    )


def send_oru(db: Database, settings: Settings, job_id: str, peer: Peer) -> SendOutcome:
    """Build, send and judge one ORU^R01; never raises for peer trouble."""
    with db.session() as session:
        data = load_input(session, job_id, settings.mrn_system)
    if data is None:
        return SendOutcome(False, False, "no-report", "job has no finished report")
    try:
        payload = build_oru(data, Endpoints.from_settings(settings)).to_er7().encode("utf-8")
    except HL7apyException as exc:  # the message would be refused anywhere: say why, once
        return SendOutcome(False, False, "invalid-message", f"ORU^R01 not built: {exc}"[:500])
    try:
        reply = exchange(peer, payload, timeout=settings.hl7_ack_timeout_seconds)
    except MllpError as exc:
        log.warning("event=hl7_send_failed job=%s peer=%s status=%s", job_id, peer, exc.status)
        return SendOutcome(False, True, exc.status, str(exc))
    outcome = classify_ack(reply, control_id(job_id))
    log.info("event=hl7_ack job=%s peer=%s ack=%s", job_id, peer, outcome.status)
    return outcome


def hl7_sender(db: Database, settings: Settings) -> Sender:
    """The sender for ``hl7`` rows (the row's target is the peer, ``host:port``); a
    malformed ``NODULEFLOW_HL7_PEER`` stops the reporter at start (ValueError)."""
    Peer.parse(settings.hl7_peer)

    def send(task: DeliveryTask) -> SendOutcome:
        try:
            peer = Peer.parse(task.target)
        except ValueError as exc:
            return SendOutcome(False, False, "bad-target", str(exc))
        return send_oru(db, settings, task.job_id, peer)

    return send
