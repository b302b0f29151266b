"""The senders the dispatcher uses, one per delivery kind: C-STORE to the PACS, FHIR push."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.delivery.dispatch import (
    HL7,
    DeliveryPolicy,
    DeliveryTask,
    Sender,
    SendOutcome,
)
from services.reporter.delivery.pacs import PacsAddress, Timeouts, destinations, store, tls_context
from services.reporter.dicom.artefacts import resolve_outbox_path
from services.reporter.dicom.inputs import InputError

log = logging.getLogger(__name__)


def dicom_sender(
    settings: Settings,
    *,
    rebuild: Callable[[str], object] | None = None,
    timeouts: Timeouts | None = None,
) -> Sender:
    """C-STORE the row's file to the row's target (``AET@host:port``; ``tls://`` for
    DICOM TLS with the ``NODULEFLOW_PACS_TLS_*`` files, checked here, at start-up).

    A file missing from the outbox (cleaned up, or a replica without the volume) is
    rebuilt from the database and storage first: same UIDs, so the same instance.
    """
    tls = None
    if settings.pacs_tls_ca or any(d.tls for d in destinations(settings.pacs)):
        tls = tls_context(settings.pacs_tls_ca, settings.pacs_tls_cert, settings.pacs_tls_key)

    def send(task: DeliveryTask) -> SendOutcome:
        try:
            address = PacsAddress.parse(task.target)
            path = resolve_outbox_path(settings, task.path)
        except ValueError as exc:
            return SendOutcome(False, False, "bad-target", str(exc))
        if not path.is_file() and rebuild is not None:
            log.warning("event=artefact_rebuild job=%s kind=%s", task.job_id, task.kind)
            try:
                rebuild(task.job_id)
            except (InputError, ValueError) as exc:
                return SendOutcome(False, False, "missing-file", f"cannot rebuild: {exc}")
        if not path.is_file():
            return SendOutcome(False, False, "missing-file", f"artefact missing: {path.name}")
        return store(path, address, calling_aet=settings.ae_title, timeouts=timeouts, tls=tls)

    return send


def fhir_sender(db: Database, settings: Settings, *, auth: httpx.Auth | None = None) -> Sender:
    """FHIR push of the job's DiagnosticReport (imported lazily: optional module), with one
    OAuth client for all pushes so that its token is reused: ``auth``, or the one the
    settings describe (ValueError: bad settings)."""
    from services.reporter.fhir.oauth import auth_from_settings
    from services.reporter.fhir.push import push_report

    auth = auth or auth_from_settings(settings)

    def send(task: DeliveryTask) -> SendOutcome:
        outcome: SendOutcome = push_report(db, settings, task.job_id, auth=auth)
        return outcome

    return send


def default_senders(
    db: Database, settings: Settings, rebuild: Callable[[str], object] | None = None
) -> dict[str, Sender]:
    senders = {"dicom": dicom_sender(settings, rebuild=rebuild)}
    if settings.fhir_push_url:
        senders["fhir"] = fhir_sender(db, settings)
    if settings.hl7_peer:
        from services.reporter.hl7.sender import hl7_sender

        senders[HL7] = hl7_sender(db, settings)
    return senders


def retry_policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        base_seconds=settings.delivery_backoff_seconds,
        max_attempts=settings.delivery_max_attempts,
    )
