"""Push a job's DiagnosticReport (with its Device and Observations) to ``FHIR_PUSH_URL``.

Each resource goes by conditional update on its business identifier
(``PUT [base]/DiagnosticReport?identifier=urn:noduleflow:report|<report id>``), so repeating a
push, or retrying one whose answer was lost, updates the same resources instead of creating
duplicates. Order: Device, then Observations, then the report that references them by the ids
the server assigned, then the Observations of the versions it replaces, as
``entered-in-error``. An amendment therefore updates the report the server already holds (a
new version of the same resource there too), and a push always sends the report's current
version: a late retry of an older analysis cannot roll the server back. Patient and
ImagingStudy are referenced logically by identifier (MR Patient ID, DICOM Study Instance UID),
since the receiving HIS owns its patient index.

Called by the delivery dispatcher for ``fhir`` rows: network errors, timeouts, 408, 429 and 5xx
are worth a retry; other 4xx are permanent.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx
from fhir.resources.R4B.resource import Resource

from services.core.db import Database
from services.core.errors import NoduleflowError, PermanentError, TransientError
from services.core.settings import Settings
from services.reporter.delivery.dispatch import SendOutcome
from services.reporter.fhir import common as fc
from services.reporter.fhir import repo
from services.reporter.fhir.build import Links, ReportInput, build_observation, build_report
from services.reporter.fhir.entities import build_device
from services.reporter.fhir.oauth import TokenError

log = logging.getLogger(__name__)
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
_RETRY_STATUS = {408, 425, 429}


class PushError(NoduleflowError):
    """A push step failed; ``outcome`` is what the delivery row records."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(outcome.detail, code=f"fhir-{outcome.status}")
        self.outcome = outcome


class PushUnavailable(PushError, TransientError):
    """Network error, timeout, 408, 425, 429 or 5xx: the delivery is retried."""


class PushRefused(PushError, PermanentError):
    """Any other 4xx: resending the same resources would be refused again."""


def _error(outcome: SendOutcome) -> PushError:
    return PushUnavailable(outcome) if outcome.retry else PushRefused(outcome)


def remote_links(data: ReportInput, device_ref: str, results: list[str]) -> Links:
    subject: dict[str, Any] = {
        "type": "Patient",
        "identifier": {
            "type": {"coding": [{"system": fc.V2_0203, "code": "MR"}]},
            "value": data.study.patient_id,
        },
    }
    return Links(
        subject=subject,
        imaging_study={
            "type": "ImagingStudy",
            "identifier": {
                "system": fc.DICOM_UID_SYSTEM,
                "value": f"urn:oid:{data.study.study_instance_uid}",
            },
        },
        device={"reference": device_ref},
        results=[{"reference": ref} for ref in results],
    )


def _body(resource: Resource) -> dict[str, Any]:
    body = resource.model_dump(mode="json")
    body.pop("id", None)  # the receiving server assigns its own ids
    tags = (body.pop("meta", None) or {}).get("tag")
    if tags:
        body["meta"] = {"tag": tags}  # versions and lastUpdated are the server's
    return body


def _put(
    client: httpx.Client, base: str, rtype: str, system: str, value: str, resource: Resource
) -> str:
    """Conditional update; returns ``Type/id`` as the server stored it."""
    url = f"{base}/{rtype}?identifier={quote(system, safe=':')}|{quote(value, safe='')}"
    try:
        response = client.put(url, json=_body(resource))
    except httpx.TimeoutException as exc:
        outcome = SendOutcome(False, True, "timeout", f"{rtype}: {type(exc).__name__}")
        raise _error(outcome) from exc
    except TokenError as exc:  # the token endpoint's answer, already without secrets
        raise _error(SendOutcome(False, exc.retry, "token", f"{rtype}: {exc}")) from exc
    except httpx.HTTPError as exc:
        outcome = SendOutcome(False, True, "network", f"{rtype}: {type(exc).__name__}")
        raise _error(outcome) from exc
    status = response.status_code
    if status in (200, 201):
        stored = response.json()
        return f"{rtype}/{stored['id']}"
    retry = status >= 500 or status in _RETRY_STATUS
    raise _error(SendOutcome(False, retry, str(status), f"{rtype}: {_diagnostics(response)}"))


def _diagnostics(response: httpx.Response) -> str:
    try:
        issue = response.json()["issue"][0]
        text = issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
    except Exception:
        text = response.reason_phrase
    return str(text)[:300]


def _push_one(client: httpx.Client, base: str, data: ReportInput) -> tuple[str, int]:
    """Device, Observations, then the report; returns (``DiagnosticReport/<id>``, count)."""
    device_ref = _device(client, base, data)
    links = remote_links(data, device_ref, [])
    results = [
        _put(
            client,
            base,
            "Observation",
            fc.OBSERVATION_SYSTEM,
            fc.observation_id(data.job.id, f.index),
            build_observation(data, f, links),
        )
        for f in data.findings
    ]
    report = build_report(data, remote_links(data, device_ref, results))
    stored = _put(client, base, "DiagnosticReport", fc.REPORT_SYSTEM, data.report_id, report)
    return stored, len(results)


def _device(client: httpx.Client, base: str, data: ReportInput) -> str:
    """The model's Device on the server (``Device/<id>``)."""
    name, version = fc.model_identity(data.job.details, data.job.model_version)
    device = build_device(name, version)
    return _put(client, base, "Device", fc.DEVICE_SYSTEM, fc.device_id(name, version), device)


def _retract(client: httpx.Client, base: str, replaced: ReportInput) -> None:
    """The Observations of a replaced version, sent again as ``entered-in-error``."""
    links = remote_links(replaced, _device(client, base, replaced), [])
    for finding in replaced.findings:
        observation = build_observation(replaced, finding, links)
        body_id = fc.observation_id(replaced.job.id, finding.index)
        _put(client, base, "Observation", fc.OBSERVATION_SYSTEM, body_id, observation)


def push_report(
    db: Database, settings: Settings, job_id: str, *, auth: httpx.Auth | None = None
) -> SendOutcome:
    """Send one job's report; never raises for remote trouble (the outcome says what to do).

    ``auth`` (``oauth.ClientCredentialsAuth``) adds a bearer token; the caller keeps it, so
    its token is reused across pushes.

    The report's current version is sent (for a superseded job too), then the findings of
    its earlier versions as ``entered-in-error``.
    """
    base = settings.fhir_push_url.rstrip("/")
    if not base:
        return SendOutcome(False, False, "not-configured", "FHIR_PUSH_URL is empty")
    with db.session() as session:
        own = repo.get_job_report(session=session, job_id=job_id)
        versions = repo.report_history(session=session, report_id=own.report_id) if own else []
    data = versions[0] if versions and versions[0].job.superseded_at is None else None
    replaced = versions[1:]
    if data is None:
        return SendOutcome(False, False, "no-report", "job has no finished report")
    headers = {"Accept": fc.FHIR_MEDIA_TYPE, "Content-Type": fc.FHIR_MEDIA_TYPE}
    try:
        with httpx.Client(timeout=TIMEOUT, headers=headers, auth=auth) as client:
            stored, count = _push_one(client, base, data)
            for earlier in replaced:
                _retract(client, base, earlier)
    except PushError as exc:
        log.warning(
            "event=fhir_push_failed job=%s status=%s retry=%s",
            job_id,
            exc.outcome.status,
            isinstance(exc, TransientError),
        )
        return exc.outcome
    log.info("event=fhir_pushed job=%s observations=%d", job_id, count)
    return SendOutcome(True, False, "200", stored)
