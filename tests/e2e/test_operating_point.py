"""No low-confidence finding anywhere: a candidate under the model's operating point
(``stage2.report_min_confidence``) leaves the worker's stored findings, the SR, the SEG, the
key images, the FHIR DiagnosticReport and Observations, the study API, the worklist row and
the study's Lung-RADS category untouched; a study whose every candidate is under it says
"no nodules" explicitly wherever findings are shown.

The whole product runs: ``noduleflow serve`` on PostgreSQL and RabbitMQ, the study sent
with DCMTK storescu, so the real receiver, worker (ONNX Runtime engine, pipeline, result
mapping) and reporter (SR/SEG/key-image builders, FHIR and study APIs) handle it. The model
is a stub in the real model format: stage one a mean filter (soft tissue → candidate), stage
two (``tests/unit/analysis/stub_stage2.py``) a classifier scoring the HU at a candidate's
centre, calibrated by the manifest: solid at the centre ≈ 1, ground glass ≈ 0.

The study holds a solid nodule of 9 mm (measured 6.8 mm: Lung-RADS 3) in the right lung and a
20 mm solid nodule with a ground-glass centre (measured 18 mm, solid: Lung-RADS 4B) in the
left one. Stage two scores the second ≈ 0.0002, under the operating point 0.5. Reported, it
would raise the study from 3 to 4B and add a finding everywhere; the control run, the same
study through the same path with the operating point at 0, shows that it does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from services.core.db import Database, Finding, Job, JobState, Study
from services.core.settings import Settings
from services.reporter.dicom.artefacts import artefact_dir
from services.reporter.dicom.codes import lung_rads_category_of
from tests.integration.worker.stub_model import write_stub_model
from tests.services import free_port, require, require_tool
from tests.unit.analysis.chest import GGN_HU, Nodule, chest, ellipsoid, write_volume
from tests.unit.analysis.stub_stage2 import stub_stage2_onnx

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

SHAPE = (64, 128, 128)
SPACING = (1.25, 1.5, 1.5)
#: reported: solid, measured 6.8 mm → Lung-RADS 3; stage two ≈ 0.9998
SEEN = Nodule((32, 57, 37), (4.5, 4.5, 4.5))
#: under the operating point: 20 mm, solid but for a ground-glass centre (what stage two
#: looks at), measured 18 mm → Lung-RADS 4B; stage two ≈ 0.0002
HIDDEN = Nodule((30, 60, 91), (10.0, 10.0, 10.0))
HIDDEN_CORE_MM = 4.5
OPERATING_POINT = 0.5
SEEN_CATEGORY, HIDDEN_CATEGORY = "3", "4B"
FHIR_JSON = {"Accept": "application/fhir+json"}
DROPPED = "event=candidates_not_reported dropped=1 "


# --- the study and the model -------------------------------------------------------------


@dataclass(frozen=True)
class CtStudy:
    files: list[Path]
    uid: str
    #: LPS mm of each lesion's centre
    centres: dict[str, np.ndarray]


def write_study(folder: Path, *, seen: bool = True) -> CtStudy:
    """The synthetic chest with the hidden lesion (and the reported nodule if ``seen``)."""
    lesions = {"hidden": HIDDEN, **({"seen": SEEN} if seen else {})}
    hu = chest(SHAPE, SPACING, list(lesions.values()))
    hu[ellipsoid(SHAPE, SPACING, HIDDEN.center_kji, (HIDDEN_CORE_MM,) * 3)] = GGN_HU
    files, _ = write_volume(hu, folder, spacing=SPACING)
    centres = {name: lps(files, n.center_kji) for name, n in lesions.items()}
    return CtStudy(files, str(dcmread(files[0]).StudyInstanceUID), centres)


def lps(files: Sequence[Path], kji: tuple[float, float, float]) -> np.ndarray:
    """LPS mm of voxel ``kji`` of the written volume, from its slice's DICOM geometry."""
    k, j, i = (round(v) for v in kji)
    ds = dcmread(files[k], stop_before_pixels=True)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    return origin + i * col_mm * orientation[:3] + j * row_mm * orientation[3:]


def write_model(folder: Path, report_min_confidence: float) -> Path:
    """The stub segmentation model plus the stub second stage at ``report_min_confidence``."""
    write_stub_model(folder)
    data = stub_stage2_onnx(gain=20.0, bias=0.0)
    (folder / "stage2.onnx").write_bytes(data)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["stage2"] = {
        "file": {
            "path": "stage2.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        },
        "candidate_threshold": 0.5,
        "calibration": {"type": "platt", "a": 1.0, "b": 0.0},
        "report_min_confidence": report_min_confidence,
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder


# --- one study through the product ---------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What every surface shows once the study's job is done."""

    job: Job
    stored: list[Finding]  # the worker's rows for the job
    findings_api: dict[str, Any]  # /api/studies/{uid}/findings
    study_api: dict[str, Any]  # /api/studies/{uid}
    worklist_row: dict[str, Any]  # the study's row of /api/worklist
    report: dict[str, Any]  # /fhir/DiagnosticReport/{job id}
    report_observations: list[dict[str, Any]]  # each of the report's results, read
    observation_search: dict[str, Any]  # /fhir/Observation (the whole server)
    sr: Dataset
    seg: Dataset | None
    key_images: list[str]  # file names


@dataclass(frozen=True)
class Shown:
    """One finding as a surface shows it."""

    centre: tuple[float, float, float]
    diameter_mm: float
    lung_rads: str


@pytest.fixture
def product(
    tmp_path: Path, postgres_url: str, rabbit_url: str, rabbit_prefix: str
) -> Iterator[Any]:
    """``run(model_dir, study, page=None)``: the study through ``serve`` on PostgreSQL and
    RabbitMQ; ``page(base_url, study)`` runs while the node still serves."""
    storescu = require_tool("storescu")

    def run(model_dir: Path, study: CtStudy, page: Any = None) -> Outcome:
        settings = Settings(
            database_url=postgres_url,
            broker_url=rabbit_url,
            broker_prefix=rabbit_prefix,
            storage_dir=tmp_path / "storage",
            outbox_dir=tmp_path / "outbox",
            dicom_port=free_port(),
            api_port=free_port(),
            study_idle_seconds=2,
            release_grace_seconds=0.5,
            model_dir=model_dir,
            providers="cpu",
        )
        from services.serve import running

        with running(settings) as node:
            sent = subprocess.run(
                [storescu, "-aec", settings.ae_title, "127.0.0.1", str(settings.dicom_port)]
                + [str(p) for p in study.files],
                env={**os.environ, "TCP_NODELAY": "1"},
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert sent.returncode == 0, sent.stderr[-2000:]
            job = wait_done(node.db, study.uid)
            assert job.state == JobState.DONE, job.reason
            with node.db.session() as session:
                stored = list(
                    session.scalars(
                        select(Finding).where(Finding.job_id == job.id).order_by(Finding.index)
                    )
                )
                session.expunge_all()
            base = settings.base_url
            with httpx.Client(base_url=base, timeout=30) as http:
                report = get(http, f"/fhir/DiagnosticReport/{job.id}", FHIR_JSON)
                outcome = Outcome(
                    job=job,
                    stored=stored,
                    findings_api=get(http, f"/api/studies/{study.uid}/findings"),
                    study_api=get(http, f"/api/studies/{study.uid}"),
                    worklist_row=one(
                        row
                        for row in get(http, "/api/worklist")["items"]
                        if row["study_uid"] == study.uid
                    ),
                    report=report,
                    report_observations=[
                        get(http, f"/fhir/{ref['reference']}", FHIR_JSON)
                        for ref in report.get("result", [])
                    ],
                    observation_search=get(http, "/fhir/Observation?_count=100", FHIR_JSON),
                    sr=dcmread(artefact_dir(settings, study.uid, job.version) / "sr.dcm"),
                    seg=read_if(artefact_dir(settings, study.uid, job.version) / "seg.dcm"),
                    key_images=sorted(
                        p.name
                        for p in artefact_dir(settings, study.uid, job.version).glob("key-*.dcm")
                    ),
                )
            if page is not None:
                page(base, study)
        return outcome

    yield run


def wait_done(db: Database, study_uid: str, timeout: float = 240) -> Job:
    """The study's job once it is final and its reporting committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            job = session.scalars(
                select(Job).join(Study).where(Study.study_instance_uid == study_uid)
            ).first()
            if job is not None and JobState(job.state).final:
                session.expunge(job)
                return job
        time.sleep(0.3)
    raise AssertionError(f"no final job for study {study_uid} in {timeout:.0f} s")


def get(http: httpx.Client, path: str, headers: dict[str, str] | None = None) -> Any:
    response = http.get(path, headers=headers)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    return response.json()


def one(rows: Iterator[dict[str, Any]]) -> dict[str, Any]:
    found = list(rows)
    assert len(found) == 1, found
    return found[0]


def read_if(path: Path) -> Dataset | None:
    return dcmread(path) if path.is_file() else None


# --- what each surface shows ---------------------------------------------------------------


def content_items(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from content_items(child)


def meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def sr_groups(sr: Dataset) -> list[Dataset]:
    """The SR's TID 1411 measurement groups (one per reported finding): the ones with the
    SCOORD3D centre, not the TID 1410 outline groups that share their tracking UIDs."""
    return [
        item
        for item in content_items(sr)
        if item.ValueType == "CONTAINER"
        and meaning(item) == "Measurement Group"
        and any(i.ValueType == "SCOORD3D" for i in content_items(item))
    ]


def sr_shown(sr: Dataset) -> list[Shown]:
    out = []
    for group in sr_groups(sr):
        items = list(content_items(group))
        (centre,) = [i for i in items if i.ValueType == "SCOORD3D" and meaning(i) == "Center"]
        (diameter,) = [i for i in items if i.ValueType == "NUM" and meaning(i) == "Diameter"]
        (category,) = [
            i
            for i in items
            if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "RID50134"
        ]  # RadLex "Lung-RADS assessment"
        value = category.ConceptCodeSequence[0]
        out.append(
            Shown(
                point(centre.GraphicData),
                float(diameter.MeasuredValueSequence[0].NumericValue),
                lung_rads_category_of(value.CodeValue, value.CodingSchemeDesignator) or "?",
            )
        )
    return out


def point(values: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def component(observation: dict[str, Any], code: str) -> dict[str, Any]:
    (found,) = [c for c in observation["component"] if c["code"]["coding"][0]["code"] == code]
    return found


def observation_shown(observation: dict[str, Any]) -> Shown:
    centre = [component(observation, f"center-{a}")["valueQuantity"]["value"] for a in "xyz"]
    return Shown(
        point(centre),
        component(observation, "81827009")["valueQuantity"]["value"],
        component(observation, "lung-rads")["valueCodeableConcept"]["coding"][0]["code"],
    )


def json_shown(finding: dict[str, Any]) -> Shown:
    return Shown(point(finding["center_mm"]), finding["diameter_mm"], finding["lung_rads"])


def surfaces(outcome: Outcome) -> dict[str, list[Shown]]:
    """Every place that lists findings, as (centre, diameter, Lung-RADS) each."""
    return {
        "worker's stored findings": [
            Shown(point(f.center_mm), f.diameter_mm, f.lung_rads)
            for f in (row.to_contract() for row in outcome.stored)
        ],
        "findings API": [json_shown(f) for f in outcome.findings_api["findings"]],
        "study API": [json_shown(f) for f in outcome.study_api["findings"]],
        "SR": sr_shown(outcome.sr),
        "FHIR report's Observations": [observation_shown(o) for o in outcome.report_observations],
        "FHIR Observation search": [
            observation_shown(e["resource"])
            for e in outcome.observation_search.get("entry", [])
            if e["resource"]["resourceType"] == "Observation"
        ],
    }


def at(shown: Shown, centre: np.ndarray, radius_mm: float) -> bool:
    return math.dist(shown.centre, centre) <= radius_mm


def seg_segments(seg: Dataset | None) -> int:
    return 0 if seg is None else len(seg.SegmentSequence)


def highest(categories: Sequence[str]) -> str:
    order = ("1", "2", "3", "4A", "4B", "4X")
    return max(categories, key=order.index, default="1")


def report_category(report: dict[str, Any]) -> str:
    return str(report["conclusionCode"][0]["coding"][0]["code"])


def dropped_by_operating_point(caplog: pytest.LogCaptureFixture) -> int:
    return sum(DROPPED in r.getMessage() for r in caplog.records)


# --- the tests ---------------------------------------------------------------------------------


def test_candidate_under_the_operating_point_is_reported_nowhere(
    tmp_path: Path, product: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.analysis.reporting")
    study = write_study(tmp_path / "ct")
    outcome = product(write_model(tmp_path / "model", OPERATING_POINT), study)
    hidden, seen = study.centres["hidden"], study.centres["seen"]

    # the worker found the lesion and the operating point dropped it
    assert dropped_by_operating_point(caplog) == 1, [r.getMessage() for r in caplog.records]
    assert outcome.job.findings_count == 1
    for name, shown in surfaces(outcome).items():
        assert [s for s in shown if at(s, hidden, HIDDEN.radius_mm[0])] == [], name
        assert [s for s in shown if s.diameter_mm >= 15] == [], name
        assert len(shown) == 1, (name, shown)
        assert at(shown[0], seen, SEEN.radius_mm[0]), (name, shown, seen)
        assert highest([s.lung_rads for s in shown]) == SEEN_CATEGORY, (name, shown)

    # SR: one measurement group; SEG: one segment; one key image
    assert len(sr_groups(outcome.sr)) == 1
    assert seg_segments(outcome.seg) == 1
    assert outcome.key_images == ["key-1.dcm"]

    # FHIR: one result, the study category and conclusion of the reported nodule only
    report = outcome.report
    assert len(report["result"]) == 1
    assert outcome.observation_search["total"] == 1
    assert report_category(report) == SEEN_CATEGORY
    (reported,) = outcome.stored
    assert report["conclusion"].startswith(
        f"1 lung nodule detected; largest {reported.diameter_mm:.1f} mm (solid)."
    )
    assert f"Highest Lung-RADS category {SEEN_CATEGORY}." in report["conclusion"]
    assert report["text"]["div"].count("<tr><td>") == 1

    # worklist: one finding, the reported one's size and category
    row = outcome.worklist_row
    assert (row["status"], row["nodules"], row["masses"]) == ("done", 1, 0)
    assert row["lung_rads"] == SEEN_CATEGORY
    assert row["largest_mm"] < 15


def test_control_without_operating_point_shows_the_candidate_everywhere(
    tmp_path: Path, product: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The same study and path at operating point 0: the lesion is a 4B finding everywhere,
    so the operating point is what hides it above."""
    caplog.set_level(logging.INFO, logger="services.analysis.reporting")
    study = write_study(tmp_path / "ct")
    outcome = product(write_model(tmp_path / "model", 0.0), study)
    hidden, seen = study.centres["hidden"], study.centres["seen"]

    assert dropped_by_operating_point(caplog) == 0
    assert outcome.job.findings_count == 2
    for name, shown in surfaces(outcome).items():
        assert len(shown) == 2, (name, shown)
        (lesion,) = [s for s in shown if at(s, hidden, HIDDEN.radius_mm[0])]
        assert lesion.diameter_mm >= 15 and lesion.lung_rads == HIDDEN_CATEGORY, (name, lesion)
        assert any(at(s, seen, SEEN.radius_mm[0]) for s in shown), (name, shown)
        assert highest([s.lung_rads for s in shown]) == HIDDEN_CATEGORY, (name, shown)
    assert len(sr_groups(outcome.sr)) == 2
    assert seg_segments(outcome.seg) == 2
    assert outcome.key_images == ["key-1.dcm", "key-2.dcm"]
    assert len(outcome.report["result"]) == 2 and outcome.observation_search["total"] == 2
    assert report_category(outcome.report) == HIDDEN_CATEGORY
    largest = max(f.diameter_mm for f in outcome.stored)
    assert largest >= 15
    assert outcome.report["conclusion"].startswith(
        f"2 lung nodules detected; largest {largest:.1f} mm"
    )
    row = outcome.worklist_row
    assert (row["nodules"], row["lung_rads"]) == (2, HIDDEN_CATEGORY)
    assert row["largest_mm"] >= 15


def test_study_with_every_candidate_under_the_operating_point_says_no_nodules(
    tmp_path: Path, product: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing reported: each surface says so explicitly rather than showing nothing."""
    caplog.set_level(logging.INFO, logger="services.analysis.reporting")
    study = write_study(tmp_path / "ct", seen=False)
    outcome = product(write_model(tmp_path / "model", OPERATING_POINT), study)

    assert dropped_by_operating_point(caplog) == 1
    assert outcome.job.findings_count == 0
    for name, shown in surfaces(outcome).items():
        assert shown == [], name
    # SR: no measurement group, and the statement: Nodule = Absent, "No nodules detected"
    assert sr_groups(outcome.sr) == []
    evaluations = [
        item
        for item in content_items(outcome.sr)
        if item.ValueType == "CONTAINER" and meaning(item) == "Qualitative Evaluations"
    ]
    assert len(evaluations) == 1
    statements = {meaning(i): i for i in evaluations[0].ContentSequence}
    assert statements["Nodule"].ConceptCodeSequence[0].CodeMeaning == "Absent"
    assert statements["Finding"].TextValue == "No nodules detected"
    assert outcome.seg is None and outcome.key_images == []
    # FHIR: no results, Lung-RADS 1, and the conclusion says it
    assert "result" not in outcome.report
    assert outcome.observation_search["total"] == 0
    assert report_category(outcome.report) == "1"
    assert outcome.report["conclusion"].startswith("No lung nodules detected. Lung-RADS 1.")
    assert "No lung nodules detected." in outcome.report["text"]["div"]
    # worklist and study API: analysed, zero findings, Lung-RADS 1 (not blank)
    row = outcome.worklist_row
    assert (row["status"], row["nodules"], row["masses"], row["largest_mm"]) == ("done", 0, 0, None)
    assert row["lung_rads"] == "1"
    assert (outcome.study_api["status"], outcome.study_api["findings"]) == ("done", [])


CHROMIUM = "/usr/bin/chromium"


def test_pages_say_no_nodules_found_when_every_candidate_is_under_the_operating_point(
    tmp_path: Path, product: Any
) -> None:
    """The worklist row and the study page of such a study, in headless Chromium."""
    require(Path(CHROMIUM).exists(), "Debian chromium")
    from playwright.sync_api import sync_playwright

    seen: dict[str, str] = {}

    def pages(base: str, study: CtStudy) -> None:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.goto(f"{base}/worklist")
                row = page.locator(f"#worklist tbody tr[data-study-uid='{study.uid}']")
                row.wait_for()
                cells = row.locator("td")
                seen["rads"] = cells.nth(0).inner_text().strip()
                seen["nodules"] = cells.nth(2).inner_text().strip()
                page.goto(f"{base}/studies/{study.uid}")
                page.wait_for_function(
                    "() => document.getElementById('conclusion').textContent !== ''"
                )
                seen["conclusion"] = page.locator("#conclusion").inner_text()
                seen["rows"] = str(page.locator("#findings tbody tr").count())
            finally:
                browser.close()

    study = write_study(tmp_path / "ct", seen=False)
    product(write_model(tmp_path / "model", OPERATING_POINT), study, pages)
    assert seen == {
        "rads": "1",
        "nodules": "none found",
        "conclusion": "No nodules found.",
        "rows": "0",
    }
