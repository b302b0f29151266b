"""Accept or reject a finding: who and when, audit, worklist, and a new Observation version."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.core import audit
from services.core.db import AuditEvent, Database, FindingReview
from services.core.settings import Settings
from services.reporter.api.app import create_app
from tests.factories.api import Made, finding_spec, make_job, make_study, seed_reports

STATIC = "s3cr3t-static-token-0123456789"
AUD, ISS = "https://noduleflow.test/fhir", "https://idp.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TEMPLATE = "https://ohif.example/viewer?StudyInstanceUIDs={study}&initialSopInstanceUID={instance}"


def reviewer(sub: str = "dr.house", scope: str = "user/*.rs user/Observation.u") -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": sub, "aud": AUD, "iss": ISS, "iat": now, "exp": now + 300, "scope": scope}
    return {"Authorization": f"Bearer {jwt.encode(claims, KEY, algorithm='RS256')}"}


@pytest.fixture
def seeded(db: Database) -> dict[str, Made]:
    with db.session() as session:
        out = seed_reports(session)
        two = make_study(session, patient_id="PAT-R", patient_name="Review^Rita", accession="R-1")
        out["r1"] = make_job(
            session,
            two,
            findings=[
                finding_spec(lung_rads="4A", slice_number=42, sop_instance_uid="1.2.3.42"),
                finding_spec(diameter_mm=5.0, lung_rads="2"),
            ],
        )
        return out


@pytest.fixture
def client(db: Database, settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    key_file = tmp_path / "jwt.pem"
    key_file.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    configured = settings.model_copy(
        update={
            "api_tokens": [STATIC],
            "jwt_public_key": key_file,
            "jwt_audience": AUD,
            "jwt_issuer": ISS,
            "viewer_url_template": TEMPLATE,
        }
    )
    with TestClient(create_app(configured, db), client=("10.1.2.3", 4000)) as c:
        yield c


def review(client: TestClient, made: Made, index: int, headers: dict[str, str], **body: object):
    uid = made.study.study_instance_uid
    payload = {"job_id": made.job.id, "decision": "accepted", **body}
    return client.post(f"/api/studies/{uid}/findings/{index}/review", json=payload, headers=headers)


def test_accept_and_reject_are_recorded_with_who_and_when(client, seeded, db: Database) -> None:
    made = seeded["r1"]
    ok = review(client, made, 1, reviewer(), comment="  typical solid nodule ")
    assert ok.status_code == 201, ok.text
    assert ok.json()["actor"] == "dr.house" and ok.json()["comment"] == "typical solid nodule"
    no = review(client, made, 2, reviewer("dr.cuddy"), decision="rejected", comment="vessel")
    assert no.status_code == 201
    with db.session() as session:
        rows = list(session.scalars(select(FindingReview).order_by(FindingReview.id)))
        trail = list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event == audit.FINDING_REVIEWED, AuditEvent.action == "U"
                )
            )
        )
    assert [(r.decision, r.actor) for r in rows] == [
        ("accepted", "dr.house"),
        ("rejected", "dr.cuddy"),
    ]
    assert all(r.at is not None for r in rows)
    assert [(e.actor, e.object_id, e.source) for e in trail] == [
        ("dr.house", f"{made.job.id}-1", "10.1.2.3"),
        ("dr.cuddy", f"{made.job.id}-2", "10.1.2.3"),
    ]
    assert "vessel" not in trail[1].detail  # the comment stays in the review row

    headers = reviewer()
    study = client.get(f"/api/studies/{made.study.study_instance_uid}", headers=headers).json()
    assert study["analysis"] == made.job.id
    first, second = study["findings"]
    assert (first["slice_number"], first["sop_instance_uid"]) == (42, "1.2.3.42")
    assert first["viewer_url"] == (
        "https://ohif.example/viewer?StudyInstanceUIDs="
        f"{made.study.study_instance_uid}&initialSopInstanceUID=1.2.3.42"
    )
    assert first["review"]["decision"] == "accepted" and second["review"]["actor"] == "dr.cuddy"
    assert [r["decision"] for r in study["reviews"]] == ["accepted", "rejected"]
    items = client.get("/api/worklist?q=rita", headers=headers).json()["items"]
    assert [(i["accepted"], i["rejected"], i["nodules"]) for i in items] == [(1, 1, 2)]
    assert items[0]["viewer_url"].startswith("https://ohif.example/viewer?StudyInstanceUIDs=1.2.")


def test_each_review_is_a_new_observation_version(client, seeded) -> None:
    made, headers = seeded["r1"], reviewer()
    oid = f"{made.job.id}-2"
    assert (
        client.get(f"/fhir/Observation/{oid}", headers=headers).json()["meta"]["versionId"] == "1"
    )
    review(client, made, 2, headers, comment="looks real")
    review(client, made, 2, reviewer("dr.cuddy"), decision="rejected", comment="vessel")
    current = client.get(f"/fhir/Observation/{oid}", headers=headers)
    body = current.json()
    assert current.headers["etag"] == 'W/"3"' and body["meta"]["versionId"] == "3"
    assert body["status"] == "entered-in-error"
    assert body["note"][0]["authorString"] == "dr.cuddy"
    assert body["note"][0]["text"] == "Rejected by the radiologist: vessel"
    accepted = client.get(f"/fhir/Observation/{oid}/_history/2", headers=headers).json()
    assert accepted["status"] == "final" and accepted["note"][0]["text"].startswith("Accepted")
    history = client.get(f"/fhir/Observation/{oid}/_history", headers=headers).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert "note" not in history["entry"][2]["resource"]
    found = client.get(
        "/fhir/Observation", params={"_id": oid, "status": "entered-in-error"}, headers=headers
    ).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["meta"]["versionId"] == "3"
    live = client.get("/fhir/Observation", params={"_id": oid, "status": "final"}, headers=headers)
    assert live.json()["total"] == 0
    since = body["meta"]["lastUpdated"]
    polled = client.get(
        "/fhir/Observation", params={"_lastUpdated": f"ge{since}"}, headers=headers
    ).json()
    assert [e["resource"]["id"] for e in polled["entry"]] == [oid]


def test_who_may_review_and_what(client, seeded) -> None:
    made = seeded["r1"]
    static = {"Authorization": f"Bearer {STATIC}"}
    assert review(client, made, 1, static).status_code == 403  # read-only tokens
    assert review(client, made, 1, reviewer(scope="user/*.rs")).status_code == 403
    assert review(client, made, 1, {}).status_code == 401
    assert review(client, made, 9, reviewer()).status_code == 404
    assert review(client, made, 1, reviewer(), decision="maybe").status_code == 400
    assert review(client, made, 1, reviewer(), comment="x" * 1001).status_code == 400
    assert review(client, made, 1, reviewer(), comment="a\x00b").status_code == 400
    assert review(client, made, 1, reviewer(), extra=1).status_code == 400
    old = seeded["a1"]  # version 1 of a study analysed again: only the current one is reviewed
    assert review(client, old, 1, reviewer()).status_code == 409
    unknown = client.post(
        "/api/studies/1.2.3.999/findings/1/review",
        json={"job_id": made.job.id, "decision": "accepted"},
        headers=reviewer(),
    )
    assert unknown.status_code == 404


def test_worklist_sorts_and_searches_on_the_server(client, seeded) -> None:
    headers = {"Authorization": f"Bearer {STATIC}"}

    def names(**params: str) -> list[str]:
        response = client.get("/api/worklist", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [i["patient_name"] for i in response.json()["items"]]

    assert names(sort="patient") == sorted(names(), key=str.lower)
    assert names(sort="-patient") == sorted(names(), key=str.lower, reverse=True)
    assert names(sort="accession")[0] == "Able Ann"  # ACC-A1
    assert names(q="baker") == ["Baker Bob", "Baker Bob"]
    assert names(q="bob baker") == ["Baker Bob", "Baker Bob"]
    assert names(q="PAT-C") == ["Cole Cy"]
    assert names(q="acc-b2") == ["Baker Bob"]
    assert names(q="%") == [] and names(q="_") == []  # wildcards are literal
    for bad in ({"sort": "patient_name; drop table studies"}, {"sort": "--patient"}):
        response = client.get("/api/worklist", params=bad, headers=headers)
        assert response.status_code == 400 and "sort must be one of" in response.text
    assert client.get("/api/worklist", params={"q": "x" * 65}, headers=headers).status_code == 400
