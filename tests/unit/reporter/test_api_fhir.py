from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import Made, seed_reports

FHIR = "application/fhir+json"


@pytest.fixture
def seeded(db: Database) -> dict[str, Made]:
    with db.session() as session:
        return seed_reports(session)


@pytest.fixture
def client(db: Database, settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings, db)
    with TestClient(app, client=("127.0.0.1", 50000), raise_server_exceptions=False) as c:
        yield c


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_metadata(client: TestClient) -> None:
    res = client.get("/fhir/metadata")
    assert res.status_code == 200 and res.headers["content-type"].startswith(FHIR)
    body = res.json()
    assert body["fhirVersion"] == "4.0.1"
    types = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert set(types) == {"DiagnosticReport", "Observation", "ImagingStudy", "Patient", "Device"}
    assert {p["name"] for p in types["DiagnosticReport"]["searchParam"]} >= {
        "patient",
        "identifier",
        "based-on",
        "status",
        "date",
        "_lastUpdated",
    }


def test_search_by_patient_identifier_and_accession(client: TestClient, seeded) -> None:
    b_key = seeded["b1"].study.patient_key
    res = client.get("/fhir/DiagnosticReport", params={"patient": f"Patient/{b_key}"})
    assert res.status_code == 200, res.text
    bundle = res.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert set(ids(bundle)) == {seeded["b1"].job.id, seeded["b2"].job.id}
    report = seeded["a1"].job.id  # amended by a1v2: one report, its id unchanged
    by_id = client.get(f"/fhir/DiagnosticReport?identifier=urn:noduleflow:report|{report}").json()
    assert ids(by_id) == [report]
    by_accession = client.get("/fhir/DiagnosticReport?identifier=ACC-B1").json()
    assert ids(by_accession) == [seeded["b1"].job.id]
    by_order = client.get("/fhir/DiagnosticReport?based-on:identifier=ACC-A1").json()
    assert ids(by_order) == [report]
    assert client.get("/fhir/DiagnosticReport?identifier=urn:other|ACC-B1").json()["total"] == 0


def test_status_amended_is_the_same_report_at_version_2(client: TestClient, seeded) -> None:
    amended = client.get("/fhir/DiagnosticReport?status=amended").json()
    assert ids(amended) == [seeded["a1"].job.id]
    report = client.get(f"/fhir/DiagnosticReport/{seeded['a1'].job.id}").json()
    assert report["status"] == "amended" and report["meta"]["versionId"] == "2"
    assert report["result"] == [{"reference": f"Observation/{seeded['a1v2'].job.id}-1"}]
    assert client.get(f"/fhir/DiagnosticReport/{seeded['a1v2'].job.id}").status_code == 404
    finals = client.get("/fhir/DiagnosticReport?status=final").json()
    assert finals["total"] == 2


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date=2026-02-20", {"b1"}),
        ("date=ge2026-03", {"b2"}),
        ("date=lt2026-02-20", {"a1"}),
        ("date=le2026-02-20", {"a1", "b1"}),
        ("date=gt2026-02-20", {"b2"}),
        ("date=ne2026-02-20", {"a1", "b2"}),
        ("date=2026", {"a1", "b1", "b2"}),
        ("date=ge2026-01-01&date=lt2026-03-01", {"a1", "b1"}),
        ("_lastUpdated=gt2030-01-01", set()),
        ("_lastUpdated=ge2026-01-01T00:00:00Z", {"a1", "b1", "b2"}),
    ],
)
def test_date_prefixes(client: TestClient, seeded, query: str, expected: set[str]) -> None:
    res = client.get(f"/fhir/DiagnosticReport?{query}")
    assert res.status_code == 200, res.text
    assert set(ids(res.json())) == {seeded[k].job.id for k in expected}


def test_paging_and_sort(client: TestClient, seeded) -> None:
    first = client.get("/fhir/DiagnosticReport?_count=2&_sort=date").json()
    assert first["total"] == 3 and len(ids(first)) == 2
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "next" in links and "previous" not in links
    second = client.get(links["next"]).json()
    assert len(ids(second)) == 1 and not set(ids(first)) & set(ids(second))
    assert {lk["relation"] for lk in second["link"]} >= {"previous"}
    dates = [e["resource"]["effectiveDateTime"] for e in first["entry"] + second["entry"]]
    assert dates == sorted(dates)
    assert len(ids(client.get("/fhir/DiagnosticReport?_count=100000").json())) == 3
    summary = client.get("/fhir/DiagnosticReport?_count=0").json()
    assert summary["total"] == 3 and "entry" not in summary


def test_include_results(client: TestClient, seeded) -> None:
    from fhir.resources.R4B.bundle import Bundle

    job = seeded["b1"].job.id
    bundle = client.get(f"/fhir/DiagnosticReport?_id={job}&_include=DiagnosticReport:result").json()
    Bundle.model_validate(bundle)  # the whole searchset, entries included
    included = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included == [f"{job}-1"]
    amended = seeded["a1"].job.id  # its current version's results only: nothing counted twice
    bundle = client.get(
        f"/fhir/DiagnosticReport?_id={amended}&_include=DiagnosticReport:result"
    ).json()
    included = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included == [f"{seeded['a1v2'].job.id}-1"]


def test_reads(client: TestClient, seeded) -> None:
    made = seeded["b1"]
    report = client.get(f"/fhir/DiagnosticReport/{made.job.id}")
    assert report.status_code == 200 and report.headers["content-type"].startswith(FHIR)
    obs_ref = report.json()["result"][0]["reference"]
    obs = client.get(f"/fhir/{obs_ref}").json()
    device_ref = obs["device"]["reference"]
    assert client.get(f"/fhir/{device_ref}").json()["version"][0]["value"] == "1.0.0"
    patient = client.get(f"/fhir/{report.json()['subject']['reference']}").json()
    assert patient["name"][0]["family"] == "Baker"
    study = client.get(f"/fhir/{report.json()['imagingStudy'][0]['reference']}").json()
    assert study["numberOfInstances"] == 3
    found = client.get(
        "/fhir/Observation", params={"derived-from": report.json()["imagingStudy"][0]["reference"]}
    ).json()
    assert ids(found) == [f"{made.job.id}-1"]
    by_code = client.get("/fhir/Observation?code=http://snomed.info/sct|27925004").json()
    assert by_code["total"] == 4
    studies = client.get(
        "/fhir/ImagingStudy",
        params={"identifier": f"urn:dicom:uid|urn:oid:{made.study.study_instance_uid}"},
    ).json()
    assert ids(studies) == [made.study.study_instance_uid]


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/DiagnosticReport/nope",
        "/fhir/Observation/x-1",
        "/fhir/Patient/abc",
        "/fhir/Device/abc",
        "/fhir/ImagingStudy/1.2.3",
        "/fhir/Nothing",
    ],
)
def test_not_found_is_operation_outcome(client: TestClient, seeded, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 404
    assert res.json()["resourceType"] == "OperationOutcome"


def test_failed_and_pending_jobs_have_no_report(client: TestClient, seeded) -> None:
    for key in ("c1", "d1"):
        assert client.get(f"/fhir/DiagnosticReport/{seeded[key].job.id}").status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "patient=1' OR '1'='1",
        "_sort=id;DROP TABLE x",
        "_count=-1",
        "_count=abc",
        "unknown=1",
        "patient=" + "A" * 10_000,
        "date=2026-13-45",
        "status:text=final",
        "_include=DiagnosticReport:performer",
        "_offset=-5",
        "identifier=" + "x," * 40,
        "patient=Patient/../../etc",
        "date=xx2026",
    ],
)
def test_hostile_parameters_are_400(client: TestClient, seeded, query: str) -> None:
    res = client.get(f"/fhir/DiagnosticReport?{query}")
    assert res.status_code == 400, (query, res.status_code, res.text[:200])
    body = res.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "invalid"


def test_lenient_handling_ignores_unknown(client: TestClient, seeded) -> None:
    res = client.get("/fhir/DiagnosticReport?foo=bar", headers={"Prefer": "handling=lenient"})
    assert res.status_code == 200 and res.json()["total"] == 3


def test_method_size_and_encoding_errors(client: TestClient) -> None:
    res = client.post("/fhir/DiagnosticReport", json={"resourceType": "DiagnosticReport"})
    assert res.status_code == 405 and res.json()["resourceType"] == "OperationOutcome"
    big = client.post("/fhir/DiagnosticReport", content=b"x" * 200_000)
    assert big.status_code == 413 and big.json()["resourceType"] == "OperationOutcome"
    gz = client.post("/fhir/DiagnosticReport", content=b"x", headers={"Content-Encoding": "gzip"})
    assert gz.status_code == 415
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 404


def test_rate_limit_is_429(db: Database, settings: Settings) -> None:
    from services.reporter.api.middleware import RateLimiter

    app = create_app(settings, db)
    app.user_middleware[0].kwargs.update(rate=0.001, burst=3)  # GuardMiddleware options
    with TestClient(app, client=("127.0.0.1", 1)) as c:
        codes = [c.get("/fhir/metadata").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = c.get("/fhir/metadata")
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["issue"][0]["code"] == "throttled"
        assert c.get("/healthz").status_code == 200  # probes are never throttled
    limiter = RateLimiter(rate=2.0, burst=1)
    assert limiter.allow("a", now=0.0) and not limiter.allow("a", now=0.1)
    assert limiter.allow("b", now=0.1) and limiter.allow("a", now=0.6)


def test_unexpected_error_is_generic_500(db: Database, settings: Settings) -> None:
    app = create_app(settings, db)

    def boom() -> None:
        raise RuntimeError("secret detail: patient Doe^Jane at /srv/data")

    app.add_api_route("/fhir/boom", boom)
    with TestClient(app, client=("127.0.0.1", 1), raise_server_exceptions=False) as c:
        res = c.get("/fhir/boom")
    assert res.status_code == 500
    body = res.json()
    correlation = res.headers["x-correlation-id"]
    assert body["issue"][0]["code"] == "exception"
    assert correlation in body["issue"][0]["diagnostics"]
    assert "secret" not in res.text and "Traceback" not in res.text


def test_search_statement_count_does_not_grow_with_results(
    db: Database, settings: Settings, seeded
) -> None:
    """No N+1: the same number of SQL statements for 1 report as for a page of many."""
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with TestClient(create_app(settings, db), client=("127.0.0.1", 1)) as c:
            job = seeded["b1"].job.id
            sizes = []
            for query in (
                f"_id={job}",
                "_count=50",
                f"_id={job}&_include=DiagnosticReport:result",
                "_count=50&_include=DiagnosticReport:result",
            ):
                statements.clear()
                assert c.get(f"/fhir/DiagnosticReport?{query}").status_code == 200
                sizes.append(len(statements))
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert sizes[0] == sizes[1] and sizes[2] == sizes[3], sizes


def test_links_never_echo_the_host_header(client: TestClient, seeded, settings: Settings) -> None:
    """Without PUBLIC_BASE_URL, links use the configured API address, not the Host header
    (a forged Host would otherwise plant its own URLs in every Bundle and CapabilityStatement)."""
    assert not settings.public_base_url
    hostile = {"Host": "evil.example:666", "X-Forwarded-Host": "evil.example"}
    expected = f"http://{settings.api_host}:{settings.api_port}/fhir"
    bundle = client.get("/fhir/DiagnosticReport?_count=1", headers=hostile).json()
    urls = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert urls and all(url.startswith(expected + "/") for url in urls), urls
    observations = client.get("/fhir/Observation?_count=1", headers=hostile).text
    metadata = client.get("/fhir/metadata", headers=hostile).text
    for body in (str(bundle), observations, metadata):
        assert "evil.example" not in body
    assert expected in metadata
