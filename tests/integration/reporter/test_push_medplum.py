from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.fhir.push import push_report
from tests.factories.api import finding_spec, make_job, make_study
from tests.fhirserver.medplum import running_medplum

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def medplum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_medplum(tmp_path_factory.mktemp("medplum") / "server.log") as base:
        yield base


def test_push_is_readable_and_idempotent(medplum: str, db: Database, settings: Settings) -> None:
    settings = settings.model_copy(update={"fhir_push_url": medplum})
    with db.session() as session:
        study = make_study(session, patient_id="PUSH-1", accession="ACC-PUSH")
        made = make_job(
            session,
            study,
            findings=[finding_spec(diameter_mm=12.0, lung_rads="4A"), finding_spec(lung_rads="2")],
        )
    job_id = made.job.id

    first = push_report(db, settings, job_id)
    assert first.ok, first
    again = push_report(db, settings, job_id)
    assert again.ok and again.detail == first.detail  # same server-side report

    search = httpx.get(
        f"{medplum}/DiagnosticReport", params={"identifier": f"urn:noduleflow:report|{job_id}"}
    ).json()
    assert search["total"] == 1
    report = search["entry"][0]["resource"]
    assert report["status"] == "final"
    assert report["conclusionCode"][0]["coding"][0]["code"] == "4A"
    assert report["subject"]["identifier"]["value"] == "PUSH-1"
    assert f"DiagnosticReport/{report['id']}" == first.detail
    observations = [httpx.get(f"{medplum}/{ref['reference']}").json() for ref in report["result"]]
    assert [o["identifier"][0]["value"] for o in observations] == [f"{job_id}-1", f"{job_id}-2"]
    all_obs = httpx.get(f"{medplum}/Observation", params={"_count": "100"}).json()
    assert all_obs["total"] == 2  # pushed twice, stored once
    device = httpx.get(f"{medplum}/{observations[0]['device']['reference']}").json()
    assert device["version"][0]["value"] == "1.0.0"
    assert httpx.get(f"{medplum}/Device").json()["total"] == 1


def test_unknown_job_is_permanent(medplum: str, db: Database, settings: Settings) -> None:
    settings = settings.model_copy(update={"fhir_push_url": medplum})
    outcome = push_report(db, settings, "0" * 32)
    assert not outcome.ok and not outcome.retry


def test_served_resources_pass_medplum_r4_validation(
    medplum: str, db: Database, settings: Settings
) -> None:
    """Everything the API serves is valid R4 per Medplum's structural validator."""
    from fastapi.testclient import TestClient

    from services.reporter.api.app import create_app
    from tests.factories.api import seed_reports

    with db.session() as session:
        seeded = seed_reports(session)
    made = seeded["a1"]  # amended by a1v2: version 2 of the same report
    with TestClient(create_app(settings, db), client=("127.0.0.1", 1)) as client:
        report = client.get(f"/fhir/DiagnosticReport/{made.job.id}").json()
        assert report["meta"]["versionId"] == "2"
        bodies = [
            report,
            client.get(f"/fhir/{report['result'][0]['reference']}").json(),
            client.get(f"/fhir/DiagnosticReport/{made.job.id}/_history").json(),
            client.get(f"/fhir/Observation/{made.job.id}-1").json(),  # entered-in-error
            client.get(f"/fhir/Observation/{made.job.id}-1/_history").json(),
            client.get(f"/fhir/{report['subject']['reference']}").json(),
            client.get(f"/fhir/{report['imagingStudy'][0]['reference']}").json(),
            client.get("/fhir/DiagnosticReport?_include=DiagnosticReport:result").json(),
            client.get("/fhir/metadata").json(),
            client.get("/fhir/DiagnosticReport/nope").json(),
        ]
        observation = bodies[1]
        bodies.append(client.get(f"/fhir/{observation['device']['reference']}").json())
    broken = {"resourceType": "DiagnosticReport", "status": "final"}  # no code: must fail
    assert httpx.post(f"{medplum}/$validate-structure", json=broken).json()["issue"]
    for body in bodies:
        outcome = httpx.post(f"{medplum}/$validate-structure", json=body).json()
        errors = [i for i in outcome["issue"] if i["severity"] == "error"]
        assert errors == [], (body["resourceType"], errors)


def test_delivery_outbox_pushes_through_dispatcher(
    medplum: str, db: Database, settings: Settings
) -> None:
    """The reporter's own delivery path: a pending ``fhir`` row → dispatcher → Medplum."""
    from sqlalchemy import select

    from services.core.db import Delivery
    from services.reporter.delivery.dispatch import Dispatcher, upsert_delivery
    from services.reporter.delivery.senders import default_senders, retry_policy

    settings = settings.model_copy(update={"fhir_push_url": medplum})
    with db.session() as session:
        study = make_study(session, patient_id="OUTBOX-1")
        job_id = make_job(session, study, findings=[finding_spec()]).job.id
        upsert_delivery(session, job_id=job_id, kind="fhir", target=medplum)
    dispatcher = Dispatcher(db, default_senders(db, settings), retry_policy(settings))
    assert dispatcher.dispatch_once() == 1
    with db.session() as session:
        row = session.scalar(select(Delivery).where(Delivery.job_id == job_id))
        assert row is not None and row.state == "delivered", (row.state, row.last_error)
    found = httpx.get(
        f"{medplum}/DiagnosticReport", params={"identifier": f"urn:noduleflow:report|{job_id}"}
    ).json()
    assert found["total"] == 1


def test_amendment_updates_the_same_remote_report(
    medplum: str, db: Database, settings: Settings
) -> None:
    """A re-analysis is sent as an update of the report the server holds (a new version
    there), the replaced findings as entered-in-error; a late push of the older analysis
    sends the current version again, never rolling the server back."""
    settings = settings.model_copy(update={"fhir_push_url": medplum})
    with db.session() as session:
        study = make_study(session, patient_id="AMEND-1")
        first = make_job(session, study, findings=[finding_spec()]).job.id
    created = push_report(db, settings, first)
    assert created.ok, created
    with db.session() as session:
        study = session.merge(study)
        second = make_job(
            session, study, version=2, findings=[finding_spec(), finding_spec(lung_rads="4B")]
        ).job.id
    amended = push_report(db, settings, second)
    assert amended.ok and amended.detail == created.detail  # the same remote resource

    found = httpx.get(
        f"{medplum}/DiagnosticReport", params={"identifier": f"urn:noduleflow:report|{first}"}
    ).json()
    assert found["total"] == 1
    report = found["entry"][0]["resource"]
    assert report["status"] == "amended" and len(report["result"]) == 2
    history = httpx.get(f"{medplum}/{created.detail}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["amended", "final"]
    old = httpx.get(
        f"{medplum}/Observation", params={"identifier": f"urn:noduleflow:observation|{first}-1"}
    ).json()["entry"][0]["resource"]
    assert old["status"] == "entered-in-error"
    live = httpx.get(f"{medplum}/Observation", params={"status": "amended"}).json()
    assert live["total"] == 2  # the nodule count follows the amendment, not 1 + 2

    assert push_report(db, settings, first).ok  # a late retry of the replaced analysis
    again = httpx.get(f"{medplum}/{created.detail}").json()
    assert again["status"] == "amended" and len(again["result"]) == 2
