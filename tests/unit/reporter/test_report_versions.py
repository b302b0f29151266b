"""Report versions: placement of finished jobs, and the FHIR versions, ETags, vread and
``_history`` they give (services/reporter/versions.py, fhir/versioning.py, fhir/history.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.fhir.versioning import etag_matches
from services.reporter.versions import Current, decide, place
from tests.factories.api import Made, finding_spec, make_job, make_study


def test_decide_first_amend_and_late_older() -> None:
    assert decide("j1", 1, None).version == 1 and decide("j1", 1, None).report_id == "j1"
    current = Current(job_id="j1", job_version=1, report_id="j1", report_version=1)
    amend = decide("j2", 2, current)
    assert (amend.report_id, amend.version, amend.supersedes, amend.amends) == ("j1", 2, "j1", True)
    late = decide("j0", 1, Current("j3", 3, "j1", 2))
    assert (late.report_id, late.version, late.supersedes) == ("j1", None, None)


@pytest.mark.parametrize(
    ("header", "vid", "expected"),
    [
        ('W/"2"', 2, True),
        ('"2"', 2, True),
        ('W/"1", W/"2"', 2, True),
        ("*", 5, True),
        ('W/"1"', 2, False),
        ("", 1, False),
        (None, 1, False),
    ],
)
def test_etag_matches(header: str | None, vid: int, expected: bool) -> None:
    assert etag_matches(header, vid) is expected


@pytest.fixture
def amended(db: Database) -> dict[str, Made]:
    """One study analysed twice: two findings, then (new images) one."""
    with db.session() as session:
        study = make_study(session, patient_id="VER-1", accession="ACC-VER")
        v1 = make_job(session, study, findings=[finding_spec(), finding_spec(lung_rads="2")])
        v2 = make_job(
            session,
            study,
            version=2,
            findings=[finding_spec(diameter_mm=11.0, lung_rads="4A")],
            finished_at=study.last_received_at + timedelta(hours=2),
        )
    return {"v1": v1, "v2": v2}


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db), client=("127.0.0.1", 50000)) as c:
        yield c


def test_placement_is_stored_on_the_jobs(db: Database, amended: dict[str, Made]) -> None:
    v1, v2 = amended["v1"].job, amended["v2"].job
    assert (v1.report_id, v1.report_version) == (v1.id, 1)
    assert (v2.report_id, v2.report_version, v2.superseded_at) == (v1.id, 2, None)
    assert v1.superseded_at == v2.finished_at
    with db.session() as session:  # an older analysis finishing last is never published
        study = session.merge(amended["v1"].study)
        late = make_job(session, study, version=0, state="reporting").job
        placement = place(session, late, v2.finished_at + timedelta(hours=1))
        assert placement.version is None and late.superseded_at is not None


def test_read_is_the_current_version_with_etag_and_304(
    client: TestClient, amended: dict[str, Made]
) -> None:
    rid = amended["v1"].job.id
    res = client.get(f"/fhir/DiagnosticReport/{rid}")
    body = res.json()
    assert res.status_code == 200 and res.headers["etag"] == 'W/"2"'
    assert res.headers["last-modified"].endswith("GMT")
    assert body["id"] == rid and body["status"] == "amended" and body["meta"]["versionId"] == "2"
    assert body["result"] == [{"reference": f"Observation/{amended['v2'].job.id}-1"}]
    cached = client.get(f"/fhir/DiagnosticReport/{rid}", headers={"If-None-Match": 'W/"2"'})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == 'W/"2"'
    stale = client.get(f"/fhir/DiagnosticReport/{rid}", headers={"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200
    assert client.get(f"/fhir/DiagnosticReport/{amended['v2'].job.id}").status_code == 404


def test_vread_and_history_of_the_report(client: TestClient, amended: dict[str, Made]) -> None:
    rid = amended["v1"].job.id
    first = client.get(f"/fhir/DiagnosticReport/{rid}/_history/1")
    assert first.status_code == 200 and first.headers["etag"] == 'W/"1"'
    assert first.json()["status"] == "final" and len(first.json()["result"]) == 2
    assert client.get(f"/fhir/DiagnosticReport/{rid}/_history/2").json()["status"] == "amended"
    for missing in ("3", "0", "x", "99999999"):
        res = client.get(f"/fhir/DiagnosticReport/{rid}/_history/{missing}")
        assert res.status_code == 404 and res.json()["resourceType"] == "OperationOutcome"
    history = client.get(f"/fhir/DiagnosticReport/{rid}/_history").json()
    Bundle.model_validate(history)
    assert history["type"] == "history" and history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
    assert history["entry"][0]["response"]["etag"] == 'W/"2"'
    assert client.get("/fhir/DiagnosticReport/nope/_history").status_code == 404


def test_replaced_observations_are_entered_in_error(
    client: TestClient, amended: dict[str, Made]
) -> None:
    old = f"{amended['v1'].job.id}-1"
    res = client.get(f"/fhir/Observation/{old}")
    assert res.status_code == 200 and res.headers["etag"] == 'W/"2"'
    assert res.json()["status"] == "entered-in-error"
    assert client.get(f"/fhir/Observation/{old}/_history/1").json()["status"] == "final"
    history = client.get(f"/fhir/Observation/{old}/_history").json()
    Bundle.model_validate(history)
    assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "final"]
    assert client.get(f"/fhir/Observation/{old}/_history/3").status_code == 404
    current = client.get(f"/fhir/Observation/{amended['v2'].job.id}-1")
    assert current.json()["status"] == "amended" and current.headers["etag"] == 'W/"1"'
    assert (
        client.get(
            f"/fhir/Observation/{amended['v2'].job.id}-1", headers={"If-None-Match": 'W/"1"'}
        ).status_code
        == 304
    )


def test_polling_last_updated_sees_the_amendment_once(
    client: TestClient, amended: dict[str, Made]
) -> None:
    v1, v2 = amended["v1"].job, amended["v2"].job
    assert v1.finished_at is not None and v2.finished_at is not None
    since = (v1.finished_at + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reports = client.get(f"/fhir/DiagnosticReport?_lastUpdated=gt{since}").json()
    assert [e["resource"]["id"] for e in reports["entry"]] == [v1.id]
    assert reports["entry"][0]["resource"]["meta"]["versionId"] == "2"
    changed = client.get(f"/fhir/Observation?_lastUpdated=gt{since}&_count=100").json()
    status = {e["resource"]["id"]: e["resource"]["status"] for e in changed["entry"]}
    assert status == {
        f"{v1.id}-1": "entered-in-error",
        f"{v1.id}-2": "entered-in-error",
        f"{v2.id}-1": "amended",
    }
    live = client.get("/fhir/Observation?status=final,amended&_count=100").json()
    assert [e["resource"]["id"] for e in live["entry"]] == [f"{v2.id}-1"]
    retracted = client.get("/fhir/Observation?status=entered-in-error").json()
    assert retracted["total"] == 2


def test_capability_statement_declares_versioning(client: TestClient) -> None:
    resources = {r["type"]: r for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    for rtype in ("DiagnosticReport", "Observation"):
        codes = {i["code"] for i in resources[rtype]["interaction"]}
        assert {"read", "vread", "history-instance"} <= codes
        assert resources[rtype]["versioning"] == "versioned"
    assert "_lastUpdated" in {p["name"] for p in resources["Observation"]["searchParam"]}


@pytest.mark.parametrize(
    ("value", "width"),
    [
        ("gt2026-01-01T10:00:00.123Z", timedelta(milliseconds=1)),
        ("gt2026-01-01T10:00:00.5+01:00", timedelta(milliseconds=100)),
        ("gt2026-01-01T10:00:00Z", timedelta(seconds=1)),
        ("gt2026-01-01T10:00Z", timedelta(minutes=1)),
    ],
)
def test_a_poll_mark_covers_only_its_own_precision(value: str, width: timedelta) -> None:
    """``_lastUpdated=gt<Bundle.meta.lastUpdated>`` must not skip the next second."""
    from services.reporter.fhir.search import parse_date

    found = parse_date("_lastUpdated", value)
    assert found.hi - found.lo == width
