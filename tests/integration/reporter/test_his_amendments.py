"""An HIS that knows a patient only by MRN polls ``_lastUpdated`` on PostgreSQL through the
served API (uvicorn, plain httpx): it sees an amendment as a new version of the same report,
and its nodule count follows the amendment without doubling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from services.core.db import Database, Job
from services.core.db.models import utcnow
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.versions import place
from tests.factories.api import finding_spec, make_job, make_study, running_api
from tests.services import free_port

pytestmark = pytest.mark.integration
TOKEN = "his-integration-token-0123456789abcdef"
MRN, SYSTEM = "HIS-4711", "urn:oid:1.2.826.0.1.3680043.10.543.99"


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def api(pg_db: Database, settings: Settings) -> Iterator[httpx.Client]:
    port = free_port()
    configured = settings.model_copy(
        update={
            "database_url": pg_db.url,
            "api_tokens": [TOKEN],
            "public_base_url": f"http://127.0.0.1:{port}",
            "mrn_system": SYSTEM,
        }
    )
    with (
        running_api(create_app(configured, pg_db), port) as base,
        httpx.Client(
            base_url=f"{base}/fhir", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
        ) as client,
    ):
        yield client


class His:
    """The HIS side: a local copy of Observations, updated by polling ``_lastUpdated``."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.observations: dict[str, str] = {}  # id → status
        self.reports: dict[str, dict[str, Any]] = {}

    def poll(self, since: str | None) -> str:
        """Apply every change since ``since``; returns the server time to poll from next."""
        params = {"patient.identifier": f"{SYSTEM}|{MRN}", "_count": "100"}
        if since:
            params["_lastUpdated"] = f"gt{since}"
        reports = self.client.get("/DiagnosticReport", params=params)
        assert reports.status_code == 200, reports.text
        for entry in reports.json().get("entry", []):
            self.reports[entry["resource"]["id"]] = entry["resource"]
        observations = self.client.get("/Observation", params=params).json()
        for entry in observations.get("entry", []):
            self.observations[entry["resource"]["id"]] = entry["resource"]["status"]
        return str(reports.json()["meta"]["lastUpdated"])

    def nodules(self) -> int:
        return sum(1 for status in self.observations.values() if status != "entered-in-error")


def test_his_polls_last_updated_and_sees_the_amendment_without_double_counts(
    pg_db: Database, api: httpx.Client
) -> None:
    with pg_db.session() as session:
        study = make_study(session, patient_id=MRN, accession="ACC-HIS")
        first = make_job(
            session,
            study,
            findings=[finding_spec(), finding_spec(lung_rads="2")],
            finished_at=utcnow() - timedelta(hours=1),
        ).job
    his = His(api)
    mark = his.poll(None)
    assert list(his.reports) == [first.id] and his.nodules() == 2
    report_id = first.id
    read = api.get(f"/DiagnosticReport/{report_id}")
    assert read.headers["etag"] == 'W/"1"'
    assert (
        api.get(f"/DiagnosticReport/{report_id}", headers={"If-None-Match": 'W/"1"'}).status_code
        == 304
    )

    with pg_db.session() as session:  # new images arrived: a second analysis of the study
        study = session.merge(study)
        second = make_job(
            session,
            study,
            version=2,
            findings=[finding_spec(diameter_mm=12.0, lung_rads="4A")],
            finished_at=utcnow(),
        ).job

    mark = his.poll(mark)
    assert list(his.reports) == [report_id]  # the same report, not a second one
    current = his.reports[report_id]
    assert current["status"] == "amended" and current["meta"]["versionId"] == "2"
    assert current["result"] == [{"reference": f"Observation/{second.id}-1"}]
    assert his.observations == {
        f"{first.id}-1": "entered-in-error",
        f"{first.id}-2": "entered-in-error",
        f"{second.id}-1": "amended",
    }
    assert his.nodules() == 1
    revalidated = api.get(f"/DiagnosticReport/{report_id}", headers={"If-None-Match": 'W/"1"'})
    assert revalidated.status_code == 200 and revalidated.headers["etag"] == 'W/"2"'
    history = api.get(f"/DiagnosticReport/{report_id}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["amended", "final"]

    quiet = api.get(
        "/DiagnosticReport",
        params={"patient.identifier": MRN, "_lastUpdated": f"gt{mark}"},
    ).json()
    assert quiet["total"] == 0  # nothing changed since the last poll


def test_two_reporters_number_versions_one_after_the_other(pg_db: Database) -> None:
    """``place`` locks the study row: concurrent commits never take the same versionId."""
    with pg_db.session() as session:
        study = make_study(session, patient_id="RACE-1")
        make_job(session, study, findings=[])
        late = [make_job(session, study, version=v, state="reporting").job.id for v in (2, 3)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def finish(job_id: str) -> None:
        try:
            with pg_db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                barrier.wait(5)
                job.state = "done"
                job.finished_at = utcnow()
                place(session, job, job.finished_at)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(job_id,)) for job_id in late]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with pg_db.session() as session:
        rows = session.query(Job).filter(Job.study_id == study.id).order_by(Job.version).all()
        published = sorted(j.report_version for j in rows if j.report_version is not None)
        current = [j.version for j in rows if j.report_version and j.superseded_at is None]
    assert published[0] == 1 and len(set(published)) == len(published)
    assert current == [3]  # the newest analysis is the current version, whichever came last
