from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.api.metrics import stage_histograms
from tests.factories.api import (
    Made,
    finding_spec,
    make_delivery,
    make_job,
    make_study,
    seed_reports,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture
def seeded(db: Database) -> dict[str, Made]:
    with db.session() as session:
        made = seed_reports(session)
        make_delivery(session, made["b1"].job, kind="sr", state="delivered")
        make_delivery(
            session, made["b1"].job, kind="fhir", state="failed", target="http://his/fhir"
        )
        return made


@pytest.fixture
def client(db: Database, settings: Settings) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings, db), client=("127.0.0.1", 1), raise_server_exceptions=False
    ) as c:
        yield c


def test_findings_shape_is_the_contract(client: TestClient, seeded) -> None:
    uid = seeded["b1"].study.study_instance_uid
    body = client.get(f"/api/studies/{uid}/findings").json()
    assert body == {
        "study_uid": uid,
        "status": "done",
        "findings": [
            {
                "center_mm": [-60.5, 20.25, -110.0],
                "diameter_mm": 16.0,
                "long_axis_mm": 8.2,
                "short_axis_mm": 6.8,
                "volume_mm3": 220.9,
                "mean_hu": -20.0,
                "kind": "solid",
                "confidence": 0.93,
                "lung_rads": "4B",
                "solid_diameter_mm": 0.0,
                "finding_type": "nodule",
                "slice_number": None,
                "sop_instance_uid": None,
            }
        ],
    }
    latest = client.get(f"/api/studies/{seeded['a1'].study.study_instance_uid}/findings").json()
    assert [f["diameter_mm"] for f in latest["findings"]] == [9.5]  # version 2 supersedes
    pending = client.get(f"/api/studies/{seeded['d1'].study.study_instance_uid}/findings").json()
    assert pending["status"] == "inferring" and pending["findings"] == []
    assert client.get("/api/studies/1.2.3.999/findings").status_code == 404


def test_study_detail(client: TestClient, seeded, settings: Settings) -> None:
    made = seeded["b1"]
    uid = made.study.study_instance_uid
    folder = settings.outbox_dir / uid / "v1"
    folder.mkdir(parents=True)
    (folder / "key-1.png").write_bytes(PNG)
    body = client.get(f"/api/studies/{uid}").json()
    assert body["study"]["accession_number"] == "ACC-B1" and body["instances"] == 3
    assert body["series"][0]["instances"] == 3
    assert [j["state"] for j in body["jobs"]] == ["done"]
    assert body["jobs"][0]["timings"]["inference"] == 3.1
    assert {(d["kind"], d["state"]) for d in body["deliveries"]} == {
        ("sr", "delivered"),
        ("fhir", "failed"),
    }
    assert body["findings"][0]["key_image"] == f"/api/studies/{uid}/key-images/1.png"
    assert body["fhir"]["report"] == f"/fhir/DiagnosticReport/{made.job.id}"
    image = client.get(f"/api/studies/{uid}/key-images/1.png")
    assert image.status_code == 200 and image.content == PNG
    assert image.headers["content-type"] == "image/png"
    assert client.get(f"/api/studies/{uid}/key-images/2.png").status_code == 404
    assert client.get(f"/api/studies/{uid}/key-images/x.png").status_code == 400
    assert client.get("/api/studies/..%2F..%2Fetc/key-images/1.png").status_code == 404


def test_worklist_order_and_filters(client: TestClient, seeded, db: Database) -> None:
    with db.session() as session:
        extra = make_study(session, patient_id="PAT-E")
        make_job(session, extra, findings=[finding_spec(diameter_mm=20.0, lung_rads="4B")])
    items = client.get("/api/worklist").json()["items"]
    order = [(i["lung_rads"], i["largest_mm"], i["status"]) for i in items]
    assert order == [
        ("4B", 20.0, "done"),
        ("4B", 16.0, "done"),
        ("4A", 9.5, "done"),
        ("1", None, "done"),
        (None, None, "failed"),
        (None, None, "inferring"),
    ]
    assert items[0]["nodules"] == 1 and items[3]["nodules"] == 0
    assert items[4]["reason"] == "no axial CT series"
    high = client.get("/api/worklist?min_lung_rads=4A").json()
    assert high["total"] == 3
    failed = client.get("/api/worklist?status=failed").json()["items"]
    assert [i["study_uid"] for i in failed] == [seeded["c1"].study.study_instance_uid]
    assert client.get("/api/worklist?received_from=2030-01-01").json()["total"] == 0
    past_end = client.get("/api/worklist?offset=50").json()
    assert past_end == {"total": 6, "items": []}
    assert client.get("/api/worklist?limit=2").json()["total"] == 6
    assert client.get("/api/worklist?status=bogus").status_code == 400
    assert client.get("/api/worklist?min_lung_rads=9").status_code == 400
    assert client.get("/api/worklist?limit=100000").status_code == 400


def test_jobs_endpoint(client: TestClient, seeded) -> None:
    uid = seeded["a1"].study.study_instance_uid
    jobs = client.get(f"/api/jobs?study={uid}").json()["jobs"]
    assert sorted(j["version"] for j in jobs) == [1, 2]


def test_pages_escape_and_validate(client: TestClient) -> None:
    page = client.get("/worklist")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "https://" not in page.text  # no external CDNs
    assert client.get("/studies/1.2.3").status_code == 200
    assert client.get("/studies/<script>").status_code == 404


def test_health_ready_metrics(client: TestClient, seeded) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    text = client.get("/metrics").text
    assert "noduleflow_instances_received_total 15.0" in text
    assert "noduleflow_studies_completed_total 3.0" in text
    assert 'noduleflow_jobs{state="failed"} 1.0' in text
    assert "noduleflow_deliveries_failed_total 1.0" in text
    assert 'noduleflow_stage_seconds_bucket{le="5.0",stage="inference"} 4.0' in text
    assert "noduleflow_database_up 1.0" in text


def test_queue_depth_and_broker_readiness(
    db: Database, settings: Settings, inprocess_broker
) -> None:
    inprocess_broker.publish("study.ready", "{}", "m1")
    with TestClient(create_app(settings, db, inprocess_broker), client=("127.0.0.1", 1)) as c:
        assert 'noduleflow_queue_depth{queue="noduleflow.inference"} 1.0' in c.get("/metrics").text
        assert c.get("/readyz").json()["checks"]["broker"] == "ok"


def test_stage_histograms_pure() -> None:
    hist = stage_histograms([{"inference": 0.2, "read": "x"}, {"inference": 7.0}, {}])
    counts, total = hist["inference"]
    assert counts[0] == 0 and counts[2] == 1 and counts[-1] == 2 and total == pytest.approx(7.2)
    assert "read" not in hist


def test_a_mass_shows_as_a_mass(client: TestClient, seeded, db: Database) -> None:
    with db.session() as session:
        extra = make_study(session, patient_id="PAT-M")
        mass = finding_spec(
            diameter_mm=41.0, lung_rads="4B", finding_type="mass", solid_diameter_mm=41.0
        )
        make_job(session, extra, findings=[mass, finding_spec(diameter_mm=5.0, lung_rads="2")])
        uid = extra.study_instance_uid
    items = client.get("/api/worklist").json()["items"]
    row = next(i for i in items if i["study_uid"] == uid)
    assert (row["nodules"], row["masses"], row["largest_mm"]) == (2, 1, 41.0)
    assert {i["masses"] for i in items if i["study_uid"] != uid} == {0, None}
    findings = client.get(f"/api/studies/{uid}").json()["findings"]
    assert [(f["finding_type"], f["solid_diameter_mm"]) for f in findings] == [
        ("mass", 41.0),
        ("nodule", 0.0),
    ]
    masses = client.get("/fhir/Observation?code=http://snomed.info/sct|4147007").json()
    nodules = client.get("/fhir/Observation?code=http://snomed.info/sct|27925004").json()
    assert (masses["total"], nodules["total"]) == (1, 5)  # the seeded 4 nodules and this one
    both = client.get("/fhir/Observation?code=http://snomed.info/sct|4147007,27925004").json()
    assert both["total"] == 6
