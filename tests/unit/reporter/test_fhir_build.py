from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from services.core.db import Database
from services.reporter.fhir import build as fb
from services.reporter.fhir import common as fc
from services.reporter.fhir import entities as fe
from services.reporter.fhir import patient as fp
from tests.factories.api import finding_spec, make_job, make_study


def _input(
    db: Database,
    *,
    name: str = "Doe^Jane",
    findings: int = 2,
    version: int = 1,
    superseded_at: datetime | None = None,
) -> fb.ReportInput:
    with db.session() as session:
        study = make_study(session, patient_name=name, accession="ACC-77")
        specs = [
            finding_spec(diameter_mm=5.0 + i, lung_rads=["2", "4A", "3"][i % 3])
            for i in range(findings)
        ]
        made = make_job(session, study, findings=specs)
        made.job.report_version = version
        made.job.superseded_at = superseded_at
    return fb.ReportInput(job=made.job, study=made.study, findings=made.findings)


def test_report_has_codes_refs_and_conclusion(db: Database) -> None:
    data = _input(db)
    report = fb.build_report(data, fb.local_links(data))
    body = json.loads(report.model_dump_json())
    assert body["status"] == "final"
    assert body["category"][0]["coding"][0] == {
        "system": fc.V2_0074,
        "code": "RAD",
        "display": "Radiology",
    }
    assert body["code"]["coding"][0]["code"] == "24627-2"
    assert body["subject"]["reference"] == f"Patient/{data.study.patient_key}"
    assert body["imagingStudy"][0]["reference"] == f"ImagingStudy/{data.study.study_instance_uid}"
    assert [r["reference"] for r in body["result"]] == [
        f"Observation/{data.job.id}-1",
        f"Observation/{data.job.id}-2",
    ]
    assert {"system": fc.REPORT_SYSTEM, "value": data.job.id} in body["identifier"]
    assert body["basedOn"][0]["identifier"]["value"] == "ACC-77"
    assert body["conclusionCode"][0]["coding"][0]["code"] == "4A"
    assert "2 lung nodules" in body["conclusion"] and "6.0 mm" in body["conclusion"]
    assert body["effectiveDateTime"] == "2026-03-01"
    assert body["issued"].endswith("Z")
    DiagnosticReport.model_validate(body)


def test_first_version_is_final_with_version_meta(db: Database) -> None:
    data = _input(db)
    body = fb.report_json(data, fb.local_links(data))
    assert body["id"] == data.job.id == data.report_id
    assert body["meta"] == {"versionId": "1", "lastUpdated": fc.instant(data.job.finished_at)}
    observation = fb.observation_json(data, data.findings[0], fb.local_links(data))
    assert observation["status"] == "final" and observation["meta"]["versionId"] == "1"


def test_amended_version_and_retracted_observations(db: Database) -> None:
    replaced = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
    data = _input(db, version=2, superseded_at=replaced)
    body = json.loads(fb.build_report(data, fb.local_links(data)).model_dump_json())
    assert body["status"] == "amended" and body["meta"]["versionId"] == "2"
    assert "tag" not in body["meta"]
    assert "Amended (version 2)" in body["conclusion"]
    links = fb.local_links(data)
    current = fb.observation_json(data, data.findings[0], links)
    assert current["status"] == "entered-in-error"
    assert current["meta"] == {"versionId": "2", "lastUpdated": "2026-04-01T09:30:00Z"}
    first = fb.observation_json(replace(data, observation_vid=1), data.findings[0], links)
    assert first["status"] == "amended" and first["meta"]["versionId"] == "1"
    with pytest.raises(ValueError, match="no version 3"):
        fb.observation_json(replace(data, observation_vid=3), data.findings[0], links)


def test_no_findings_is_lung_rads_1(db: Database) -> None:
    data = _input(db, findings=0)
    body = json.loads(fb.build_report(data, fb.local_links(data)).model_dump_json())
    assert "result" not in body
    assert body["conclusionCode"][0]["coding"][0]["code"] == "1"
    assert body["conclusion"].startswith("No lung nodules detected")


def test_observation_components(db: Database) -> None:
    data = _input(db, findings=1)
    obs = fb.build_observation(data, data.findings[0], fb.local_links(data))
    body = json.loads(obs.model_dump_json())
    by_code = {c["code"]["coding"][0]["code"]: c for c in body["component"]}
    assert by_code["81827009"]["valueQuantity"] == {
        "value": 5.0,
        "unit": "mm",
        "system": fc.UCUM,
        "code": "mm",
    }
    assert by_code["118565006"]["valueQuantity"]["code"] == "mm3"
    assert by_code["lung-rads"]["valueCodeableConcept"]["coding"][0]["code"] == "2"
    assert by_code["nodule-type"]["valueCodeableConcept"]["coding"][0]["code"] == "solid"
    assert by_code["center-x"]["valueQuantity"]["value"] == -60.5
    assert body["bodySite"]["coding"][0]["code"] == "39607008"
    assert body["device"]["reference"].startswith("Device/nodule-seg-1.0.0-")
    assert body["derivedFrom"][0]["reference"].startswith("ImagingStudy/")


def test_patient_narrative_is_escaped(db: Database) -> None:
    data = _input(db, name="<script>alert(1)</script>^Eve")
    patient = json.loads(fp.build_patient(data.study).model_dump_json())
    assert "<script>" not in patient["text"]["div"]
    assert "&lt;script&gt;" in patient["text"]["div"]
    assert patient["name"][0]["family"] == "<script>alert(1)</script>"
    assert patient["gender"] == "female" and patient["birthDate"] == "1955-04-12"
    report = fb.build_report(data, fb.local_links(data)).model_dump_json()
    assert "script" not in report


def test_device_and_imaging_study(db: Database) -> None:
    data = _input(db)
    device = json.loads(fe.build_device("nodule-seg", "1.0.0").model_dump_json())
    assert device["id"] == fc.device_id("nodule-seg", "1.0.0")
    assert device["version"][0]["value"] == "1.0.0"
    series = [fe.SeriesInfo(uid="1.2.3", number=1, modality="CT", description="ax", instances=3)]
    study = json.loads(fe.build_imaging_study(data.study, series).model_dump_json())
    assert study["identifier"][0] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{data.study.study_instance_uid}",
    }
    assert study["numberOfInstances"] == 3 and study["series"][0]["modality"]["code"] == "CT"


def test_conversions() -> None:
    assert fc.fhir_date("20261301") is None
    assert fc.fhir_datetime("20260102", "99") == "2026-01-02"
    assert fc.fhir_datetime("20260102", "0815", "+0100") == "2026-01-02T08:15:00+01:00"
    assert fc.fhir_datetime("20260102", "0815") == "2026-01-02"
    assert fc.person_name("Doe^John^^Dr") == {
        "use": "official",
        "text": "Doe John Dr",
        "family": "Doe",
        "given": ["John"],
        "prefix": ["Dr"],
    }
    assert fc.highest_lung_rads(["2", "4B", "4A"]) == "4B"
    assert fc.parse_observation_id("abc-3") == ("abc", 3)
    assert fc.parse_observation_id("abc") is None


def test_json_fast_path_equals_model_dump(db: Database) -> None:
    data = _input(db, findings=2, version=2)
    links = fb.local_links(data)
    assert fb.report_json(data, links) == json.loads(fb.build_report(data, links).model_dump_json())
    assert fb.observation_json(data, data.findings[0], links) == json.loads(
        fb.build_observation(data, data.findings[0], links).model_dump_json()
    )


def test_cache_key_changes_when_superseded(db: Database) -> None:
    from services.reporter.fhir.cache import ReportCache

    data = _input(db, findings=1)
    cache = ReportCache(max_entries=2)
    first = cache.report(data)
    assert cache.report(data) is first and len(cache.observations(data)) == 1
    data.job.superseded_at = datetime(2026, 4, 1, tzinfo=UTC)
    retracted = cache.observations(data)
    assert json.loads(retracted[0][2])["status"] == "entered-in-error"
    assert cache.report(data) is not first  # evicted (max 2), rebuilt


def test_a_mass_is_coded_as_a_mass(db: Database) -> None:
    with db.session() as session:
        study = make_study(session, accession="ACC-M")
        made = make_job(
            session,
            study,
            findings=[
                finding_spec(diameter_mm=42.0, lung_rads="4B", finding_type="mass"),
                finding_spec(diameter_mm=6.0, lung_rads="2"),
            ],
        )
    data = fb.ReportInput(job=made.job, study=made.study, findings=made.findings)
    links = fb.local_links(data)
    mass, nodule = (
        json.loads(fb.build_observation(data, f, links).model_dump_json()) for f in data.findings
    )
    assert mass["code"]["coding"] == [fc.MASS_CODE]
    assert mass["code"]["coding"][0]["code"] == "4147007" and mass["code"]["text"] == "Lung mass 1"
    assert nodule["code"]["coding"] == [fc.NODULE_CODE]
    body = json.loads(fb.build_report(data, links).model_dump_json())
    assert body["conclusion"].startswith("1 lung nodule and 1 lung mass detected; largest 42.0 mm")
    assert "mass, solid" in body["text"]["div"]
