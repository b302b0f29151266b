"""The searches an HIS uses: Patient by MRN, chained and coded DiagnosticReport and
Observation searches, _include, _summary, _elements, POST _search, content negotiation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.core.db import Database
from services.core.db.models import issuer_system, patient_key
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import Made, finding_spec, make_job, make_study

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.999.1"
OTHER_ISSUER = "1.2.826.0.1.3680043.10.543.77"


@pytest.fixture
def seeded(db: Database) -> dict[str, Made]:
    """Two patients share the MRN "MRN-1" under two issuers; a third has MRN "MRN-3"."""
    with db.session() as session:
        local = make_study(session, patient_id="MRN-1", patient_name="Able^Ann")
        other = make_study(
            session,
            patient_id="MRN-1",
            patient_name="Other^Olga",
            issuer_of_patient_id=OTHER_ISSUER,
            study_date="20260215",
        )
        third = make_study(session, patient_id="MRN-3", patient_name="Cole^Cy")
        return {
            "local": make_job(
                session,
                local,
                findings=[
                    finding_spec(kind="solid", lung_rads="4A"),
                    finding_spec(kind="ground-glass", lung_rads="2"),
                ],
            ),
            "other": make_job(session, other, findings=[finding_spec(kind="part-solid")]),
            "third": make_job(session, third, findings=[]),
        }


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"mrn_system": MRN_SYSTEM})
    app = create_app(configured, db)
    with TestClient(app, client=("127.0.0.1", 50000), raise_server_exceptions=False) as c:
        yield c


def ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_issuer_names_the_identifier_system() -> None:
    assert issuer_system("") == ""
    assert issuer_system("HOSP-A") == ""  # a local name: the configured system applies
    assert issuer_system("1.2.3.4") == "urn:oid:1.2.3.4"
    assert issuer_system("https://hospital.example/mrn") == "https://hospital.example/mrn"
    assert issuer_system("urn:oid:1.2.3") == "urn:oid:1.2.3"
    assert issuer_system("1.2.x") == ""
    assert patient_key("MRN-1") != patient_key("MRN-1", OTHER_ISSUER)
    assert patient_key("MRN-1", "") == patient_key("MRN-1")  # old rows keep their id


def test_mrn_system_setting_must_be_a_uri(settings: Settings) -> None:
    with pytest.raises(ValueError, match="NODULEFLOW_MRN_SYSTEM"):
        Settings.model_validate({**settings.model_dump(), "mrn_system": "not a uri"})


def test_patient_read_and_identifier_search(client: TestClient, seeded) -> None:
    local, other = seeded["local"].study, seeded["other"].study
    patient = client.get(f"/fhir/Patient/{local.patient_key}").json()
    mrn = patient["identifier"][0]
    assert mrn["system"] == MRN_SYSTEM and mrn["value"] == "MRN-1"
    assert mrn["type"]["coding"][0]["code"] == "MR"
    theirs = client.get(f"/fhir/Patient/{other.patient_key}").json()["identifier"][0]
    assert theirs["system"] == f"urn:oid:{OTHER_ISSUER}"
    assert theirs["assigner"]["display"] == OTHER_ISSUER

    def found(query: str) -> set[str]:
        res = client.get(f"/fhir/Patient?{query}")
        assert res.status_code == 200, res.text
        return set(ids(res.json()))

    assert found(f"identifier={MRN_SYSTEM}|MRN-1") == {local.patient_key}
    assert found(f"identifier=urn:oid:{OTHER_ISSUER}|MRN-1") == {other.patient_key}
    assert found("identifier=MRN-1") == {local.patient_key, other.patient_key}
    assert found("identifier=|MRN-1") == set()  # every MRN here has a system
    assert found("identifier=urn:oid:9.9|MRN-1") == set()
    assert found(f"_id={other.patient_key}") == {other.patient_key}
    assert client.get("/fhir/Patient?name=Able").status_code == 400


def test_report_chained_patient_identifier(client: TestClient, seeded) -> None:
    local = seeded["local"].job.id
    other = seeded["other"].job.id
    for query, expected in [
        ("patient.identifier=MRN-1", {local, other}),
        (f"patient.identifier={MRN_SYSTEM}|MRN-1", {local}),
        (f"subject:Patient.identifier={MRN_SYSTEM}|MRN-1", {local}),
        (f"subject.identifier=urn:oid:{OTHER_ISSUER}|MRN-1", {other}),
        ("patient.identifier=MRN-3,MRN-1", {local, other, seeded["third"].job.id}),
        ("patient.identifier=nobody", set()),
    ]:
        res = client.get(f"/fhir/DiagnosticReport?{query}")
        assert res.status_code == 200, (query, res.text)
        assert set(ids(res.json())) == expected, query
    observations = client.get(f"/fhir/Observation?patient.identifier={MRN_SYSTEM}|MRN-1").json()
    assert observations["total"] == 2


def test_include_subject(client: TestClient, seeded) -> None:
    res = client.get(
        "/fhir/DiagnosticReport?patient.identifier=MRN-1&_include=DiagnosticReport:subject"
    )
    bundle = res.json()
    assert res.status_code == 200 and len(ids(bundle)) == 2
    included = ids(bundle, "include")
    assert sorted(included) == sorted(
        {seeded["local"].study.patient_key, seeded["other"].study.patient_key}
    )
    subjects = {e["resource"]["subject"]["reference"] for e in bundle["entry"][:2]}
    assert subjects == {f"Patient/{key}" for key in included}


def test_category_and_code(client: TestClient, seeded) -> None:
    def total(query: str) -> int:
        res = client.get(f"/fhir/DiagnosticReport?{query}")
        assert res.status_code == 200, (query, res.text)
        return int(res.json()["total"])

    assert total("category=http://loinc.org|LP29684-5") == 3
    assert total("category=http://terminology.hl7.org/CodeSystem/v2-0074|RAD") == 3
    assert total("category=RAD") == 3
    assert total("category=http://loinc.org|LP29708-2") == 0  # cardiology
    assert total("code=http://loinc.org|24627-2") == 3
    assert total("code=http://loinc.org|18748-4") == 0
    assert total("category=LP29684-5&code=24627-2&patient.identifier=MRN-3") == 1


def test_summary_count_elements_and_sort(client: TestClient, seeded) -> None:
    counted = client.get("/fhir/DiagnosticReport?_summary=count").json()
    assert counted["total"] == 3 and "entry" not in counted
    assert client.get("/fhir/DiagnosticReport?_summary=true").status_code == 400
    res = client.get("/fhir/DiagnosticReport?_elements=subject,effective&_sort=-date")
    assert res.status_code == 200, res.text
    entries = [e["resource"] for e in res.json()["entry"]]
    assert set(entries[0]) == {
        "resourceType", "id", "meta", "status", "code", "subject", "effectiveDateTime"
    }  # fmt: skip
    assert entries[0]["meta"]["tag"][-1]["code"] == "SUBSETTED"
    dates = [e["effectiveDateTime"] for e in entries]
    assert dates == sorted(dates, reverse=True) and dates[-1].startswith("2026-02-15")
    bad = client.get("/fhir/DiagnosticReport?_elements=secret")
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_post_search_matches_get(client: TestClient, seeded) -> None:
    query = {"patient.identifier": f"{MRN_SYSTEM}|MRN-1", "_include": "DiagnosticReport:result"}
    got = client.get("/fhir/DiagnosticReport", params=query).json()
    posted = client.post("/fhir/DiagnosticReport/_search", data=query)
    assert posted.status_code == 200, posted.text
    assert ids(posted.json()) == ids(got) == [seeded["local"].job.id]
    assert ids(posted.json(), "include") == ids(got, "include")
    for path in ("Observation", "Patient", "ImagingStudy"):
        assert client.post(f"/fhir/{path}/_search", data={"_count": "1"}).status_code == 200
    as_json = client.post("/fhir/DiagnosticReport/_search", json=query)
    assert as_json.status_code == 415 and as_json.json()["resourceType"] == "OperationOutcome"
    unknown = client.post("/fhir/DiagnosticReport/_search", data={"foo": "bar"})
    assert unknown.status_code == 400


def test_observation_status_date_category_code(client: TestClient, seeded) -> None:
    def total(query: str) -> int:
        res = client.get(f"/fhir/Observation?{query}")
        assert res.status_code == 200, (query, res.text)
        return int(res.json()["total"])

    assert total("status=final") == 3
    assert total("status=amended") == 0
    assert total("date=2026-02-15") == 1
    assert total("date=gt2026-02-15") == 2
    assert total("date=lt2026-02-15") == 0
    assert total("category=http://terminology.hl7.org/CodeSystem/observation-category|imaging") == 3
    assert total("category=laboratory") == 0
    assert total("code=http://snomed.info/sct|27925004") == 3


def test_standard_codes_beside_private_ones(client: TestClient, seeded) -> None:
    report = client.get(f"/fhir/DiagnosticReport/{seeded['local'].job.id}").json()
    categories = {(c["system"], c["code"]) for c in report["category"][0]["coding"]}
    assert ("http://loinc.org", "LP29684-5") in categories
    assert ("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD") in categories
    conclusion = {c["system"]: c["code"] for c in report["conclusionCode"][0]["coding"]}
    assert conclusion["http://www.radlex.org"] == "RID50139"  # Lung-RADS 4A
    observation = client.get(f"/fhir/{report['result'][1]['reference']}").json()
    by_code = {
        coding["code"]: component
        for component in observation["component"]
        for coding in component["code"]["coding"]
    }
    lung_rads = by_code["RID50134"]
    assert "1362105002" in {c["code"] for c in lung_rads["code"]["coding"]}
    assert {c["code"] for c in lung_rads["valueCodeableConcept"]["coding"]} == {"2", "RID50137"}
    attenuation = by_code["RID46010"]["valueCodeableConcept"]["coding"]
    assert {c["code"] for c in attenuation} == {"ground-glass", "RID46016", "1217294009"}


@pytest.mark.parametrize(
    "path",
    ["/fhir/metadata", "/fhir/DiagnosticReport", "/fhir/Patient?identifier=MRN-1", "/fhir/x"],
)
def test_xml_is_refused_alike(client: TestClient, seeded, path: str) -> None:
    joiner = "&" if "?" in path else "?"
    for res in (
        client.get(f"{path}{joiner}_format=xml"),
        client.get(f"{path}{joiner}_format=application/fhir%2Bxml"),
        client.get(path, headers={"Accept": "application/fhir+xml"}),
        client.get(path, headers={"Accept": "application/json;q=0, application/xml"}),
    ):
        assert res.status_code == 406, (path, res.status_code)
        assert res.headers["content-type"].startswith("application/fhir+json")
        assert res.json()["resourceType"] == "OperationOutcome"
        assert res.headers["x-content-type-options"] == "nosniff"
    for accept in ("application/fhir+xml;q=0.9, application/fhir+json", "*/*", "text/html,*/*"):
        ok = client.get("/fhir/metadata", headers={"Accept": accept})
        assert ok.status_code == 200, accept
    assert client.get("/fhir/metadata?_format=json").status_code == 200
    report = client.get(f"/fhir/DiagnosticReport/{seeded['local'].job.id}?_format=xml")
    assert report.status_code == 406


def test_capability_lists_what_works(client: TestClient) -> None:
    body = client.get("/fhir/metadata").json()
    rest = body["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    report = types["DiagnosticReport"]
    assert set(report["searchInclude"]) == {"DiagnosticReport:result", "DiagnosticReport:subject"}
    assert {"patient.identifier", "category", "code"} <= {p["name"] for p in report["searchParam"]}
    assert {"status", "date", "category", "code"} <= {
        p["name"] for p in types["Observation"]["searchParam"]
    }
    assert {"search-type", "read"} <= {i["code"] for i in types["Patient"]["interaction"]}
    assert {p["name"] for p in types["Patient"]["searchParam"]} == {"identifier", "_id"}
    assert {"_summary", "_elements", "_count"} <= {p["name"] for p in rest["searchParam"]}
    assert body["format"] == ["json", "application/fhir+json"]
