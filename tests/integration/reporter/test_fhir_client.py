"""A real FHIR client library (fhirclient, R4 models) reads our API served by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhirclient import client as fhir_client
from fhirclient.models.diagnosticreport import DiagnosticReport
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import Made, finding_spec, make_job, make_study, running_api, seed_reports
from tests.services import free_port

pytestmark = pytest.mark.integration
TOKEN = "integration-token-0123456789abcdef"


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def smart(pg_db: Database, settings: Settings) -> Iterator[tuple[fhir_client.FHIRClient, dict]]:
    with pg_db.session() as session:
        seeded = seed_reports(session)
        for n in range(7):  # seven studies, so seven reports, of one patient: paging
            many = make_study(session, patient_id="PAT-MANY", accession=f"ACC-MANY-{n}")
            make_job(session, many, findings=[finding_spec()])
        seeded["many"] = Made(study=many, job=None, findings=[])  # type: ignore[arg-type]
    # the API's links name its configured public URL, never the request's Host header
    port = free_port()
    configured = settings.model_copy(
        update={
            "database_url": pg_db.url,
            "api_tokens": [TOKEN],
            "public_base_url": f"http://127.0.0.1:{port}",
        }
    )
    with running_api(create_app(configured, pg_db), port) as base:
        smart = fhir_client.FHIRClient(settings={"app_id": "nf-test", "api_base": f"{base}/fhir"})
        smart.server.session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield smart, seeded


def test_fhirclient_reads_reports_by_patient_and_accession(smart) -> None:
    client, seeded = smart
    server = client.server
    b_key = seeded["b1"].study.patient_key
    reports = list(DiagnosticReport.where(struct={"patient": b_key}).perform_resources_iter(server))
    assert {r.id for r in reports} == {seeded["b1"].job.id, seeded["b2"].job.id}
    report = next(r for r in reports if r.id == seeded["b1"].job.id)
    assert report.status == "final"
    assert report.code.coding[0].system == "http://loinc.org"
    assert report.code.coding[0].code == "24627-2"
    assert report.category[0].coding[0].code == "RAD"
    assert report.conclusionCode[0].coding[0].code == "4B"

    by_accession = list(
        DiagnosticReport.where(struct={"based-on:identifier": "ACC-A1"}).perform_resources_iter(
            server
        )
    )
    # re-analysed: one report, at version 2
    assert [(r.id, r.status) for r in by_accession] == [(seeded["a1"].job.id, "amended")]
    assert by_accession[0].meta.versionId == "2"
    by_identifier = list(
        DiagnosticReport.where(struct={"identifier": "ACC-B2"}).perform_resources_iter(server)
    )
    assert [r.id for r in by_identifier] == [seeded["b2"].job.id]

    observation = Observation.read(report.result[0].reference.split("/")[1], server)
    assert observation.bodySite.coding[0].code == "39607008"
    diameters = [
        c.valueQuantity.value for c in observation.component if c.code.coding[0].code == "81827009"
    ]
    assert diameters == [16.0]
    patient = Patient.read(b_key, server)
    assert patient.name[0].family == "Baker"


def test_fhirclient_follows_paging_links(smart) -> None:
    client, seeded = smart
    key = seeded["many"].study.patient_key
    search = DiagnosticReport.where(struct={"patient": key, "_count": "3"})
    pages = list(search.perform_iter(client.server))
    assert [len(p.entry or []) for p in pages] == [3, 3, 1]
    assert pages[0].total == 7
    ids = [e.resource.id for p in pages for e in p.entry]
    assert len(set(ids)) == 7
