"""An HIS that knows only a patient's MRN and its system finds the patient, the study's
report and its Observations over HTTP (httpx against uvicorn, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import Made, finding_spec, make_job, make_study, running_api

pytestmark = pytest.mark.integration
TOKEN = "integration-token-0123456789abcdef"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
MRN = "HIS-4711"


@pytest.fixture
def his(postgres_url: str, settings: Settings) -> Iterator[tuple[httpx.Client, dict[str, Made]]]:
    db = Database(postgres_url)
    db.upgrade()
    with db.session() as session:
        mine = make_study(session, patient_id=MRN, patient_name="Hall^Hana", accession="ACC-H1")
        # the same MRN under another issuer is another patient
        other = make_study(session, patient_id=MRN, issuer_of_patient_id="1.2.826.0.1.99")
        seeded = {
            "mine": make_job(
                session,
                mine,
                findings=[finding_spec(lung_rads="4A"), finding_spec(kind="ground-glass")],
            ),
            "other": make_job(session, other, findings=[finding_spec()]),
        }
    configured = settings.model_copy(
        update={"database_url": postgres_url, "api_tokens": [TOKEN], "mrn_system": MRN_SYSTEM}
    )
    with running_api(create_app(configured, db)) as base:
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"}
        with httpx.Client(base_url=f"{base}/fhir", headers=headers, timeout=10) as client:
            yield client, seeded
    db.dispose()


def _resources(bundle: dict, mode: str = "match") -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_his_finds_patient_report_and_observations_by_mrn(his) -> None:
    client, seeded = his
    # 1. the patient, by MRN and system
    found = client.get("Patient", params={"identifier": f"{MRN_SYSTEM}|{MRN}"})
    assert found.status_code == 200, found.text
    patients = _resources(found.json())
    assert [p["id"] for p in patients] == [seeded["mine"].study.patient_key]
    assert patients[0]["identifier"][0] == {
        "use": "usual",
        "type": patients[0]["identifier"][0]["type"],
        "system": MRN_SYSTEM,
        "value": MRN,
    }
    # 2. the study's report and its Observations, by the chained MRN, bare and system|value
    bare = client.get("DiagnosticReport", params={"patient.identifier": MRN}).json()
    assert bare["total"] == 2  # both issuers' patients carry this MRN
    scoped = client.get(
        "DiagnosticReport",
        params={
            "patient.identifier": f"{MRN_SYSTEM}|{MRN}",
            "category": "http://loinc.org|LP29684-5",
            "_include": ["DiagnosticReport:result", "DiagnosticReport:subject"],
            "_sort": "-date",
        },
    )
    assert scoped.status_code == 200, scoped.text
    bundle = scoped.json()
    reports = _resources(bundle)
    assert [r["id"] for r in reports] == [seeded["mine"].job.id]
    report = reports[0]
    assert report["status"] == "final"
    assert report["subject"]["reference"] == f"Patient/{patients[0]['id']}"
    included = _resources(bundle, "include")
    observations = [r for r in included if r["resourceType"] == "Observation"]
    assert sorted(o["id"] for o in observations) == sorted(
        r["reference"].split("/")[1] for r in report["result"]
    )
    assert [r["id"] for r in included if r["resourceType"] == "Patient"] == [patients[0]["id"]]
    # 3. the same Observations by their own search, and the count alone
    direct = client.get(
        "Observation", params={"patient.identifier": f"{MRN_SYSTEM}|{MRN}", "status": "final"}
    ).json()
    assert sorted(o["id"] for o in _resources(direct)) == sorted(o["id"] for o in observations)
    counted = client.get(
        "Observation", params={"subject:Patient.identifier": MRN, "_summary": "count"}
    ).json()
    assert counted["total"] == 3 and "entry" not in counted
    # 4. a POST _search (form) gives what the GET gave
    posted = client.post(
        "DiagnosticReport/_search",
        data={"subject:Patient.identifier": f"{MRN_SYSTEM}|{MRN}"},
    )
    assert posted.status_code == 200, posted.text
    assert [r["id"] for r in _resources(posted.json())] == [seeded["mine"].job.id]
    # 5. XML is refused alike by Accept and _format
    for res in (
        client.get(
            "Patient", params={"identifier": MRN}, headers={"Accept": "application/fhir+xml"}
        ),
        client.get("Patient", params={"identifier": MRN, "_format": "xml"}),
    ):
        assert res.status_code == 406 and res.json()["resourceType"] == "OperationOutcome"
