"""Key Object Selection: content, identity, its place among the artefacts, and the
validators over everything one job writes (dciodvfy per object, dcentvfy across them and
the source CT)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from services.core.settings import Settings
from services.reporter.dicom.artefacts import Artefact, dataset_bytes, write_artefacts
from services.reporter.dicom.inputs import JobInputs
from services.reporter.dicom.keyimage import build_key_image
from services.reporter.dicom.kos import KOS_SERIES_BASE, build_kos
from services.reporter.dicom.model import Algorithm, OutputUids
from services.reporter.dicom.sr import build_sr
from tests.factories.reporting import (
    NoduleSeries,
    Sphere,
    build_inputs,
    dcentvfy,
    dciodvfy,
    nodule_series,
)

ALGORITHM = Algorithm("nodule-seg", "2.1.0")
# dciodvfy warnings we accept: our private code scheme, Type 2 study attributes the
# synthetic source leaves empty (see test_sr.py), and the key image's empty Laterality
# (see test_keyimage.py).
ACCEPTED_WARNINGS = ("99NDLFLW", "needed to build DICOMDIR", "Laterality")


def two_nodules() -> NoduleSeries:
    return nodule_series(
        spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2, "ground-glass", "2")]
    )


def kos_of(series: NoduleSeries, version: int = 1) -> tuple[Dataset, list[str]]:
    headers, findings = build_inputs(series)
    uids = OutputUids(series.study_uid, version)
    sr = build_sr(source_images=headers, findings=findings, algorithm=ALGORITHM, uids=uids)
    slices, images = [], []
    for finding in findings:
        k = finding.largest_slice()
        sc, _ = build_key_image(
            source=series.datasets[k],
            header=headers[k],
            finding=finding,
            algorithm=ALGORITHM,
            uids=uids,
        )
        slices.append(headers[k])
        images.append(sc)
    kos = build_kos(key_slices=slices, key_images=images, sr=sr, algorithm=ALGORITHM, uids=uids)
    expected = [str(ds.SOPInstanceUID) for ds in [*slices, *images, sr]]
    return dcmread(io.BytesIO(dataset_bytes(kos))), expected


def test_kos_flags_key_slices_key_images_and_the_sr() -> None:
    series = two_nodules()
    kos, expected = kos_of(series)
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert kos.Modality == "KO"
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113000",
        "DCM",
        "Of Interest",
    )
    assert kos.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    referenced = [
        (item.ValueType, item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    ]
    assert [uid for _, uid in referenced] == expected
    kinds = dict((uid, kind) for kind, uid in referenced)
    assert kinds[expected[-1]] == "COMPOSITE"  # the SR
    assert {kinds[uid] for uid in expected[:-1]} == {"IMAGE"}
    evidence = {
        ref.ReferencedSOPInstanceUID: ref.ReferencedSOPClassUID
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    }
    assert set(evidence) == set(expected)
    assert evidence[expected[-1]] == Comprehensive3DSRStorage
    assert evidence[expected[2]] == SecondaryCaptureImageStorage
    description = [
        i.TextValue
        for i in kos.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert description == ["Lung nodule AI: key slices, key images and the measurement report"]


def test_kos_identity_is_the_source_study_and_derived_uids() -> None:
    series = two_nodules()
    kos, _ = kos_of(series, version=2)
    uids = OutputUids(series.study_uid, 2)
    assert kos.StudyInstanceUID == series.study_uid
    assert kos.PatientID == series.datasets[0].PatientID
    assert kos.PatientName == series.datasets[0].PatientName
    assert kos.SOPInstanceUID == uids.kos_instance
    assert kos.SeriesInstanceUID == uids.kos_series
    assert kos.SeriesNumber == KOS_SERIES_BASE + 2
    assert kos.Manufacturer == "noduleflow"
    again, _ = kos_of(series, version=2)
    assert again.SOPInstanceUID == kos.SOPInstanceUID
    assert uids.kos_instance not in {uids.sr_instance, uids.seg_instance, uids.key_instance(1)}


def test_kos_refuses_nothing_to_flag_and_other_studies() -> None:
    series = two_nodules()
    headers, _ = build_inputs(series)
    uids = OutputUids(series.study_uid, 1)
    sr = build_sr(source_images=headers, findings=[], algorithm=ALGORITHM, uids=uids)
    with pytest.raises(ValueError, match="at least one key slice"):
        build_kos(key_slices=[], key_images=[], sr=sr, algorithm=ALGORITHM, uids=uids)
    stranger = Dataset()
    stranger.SOPClassUID = SecondaryCaptureImageStorage
    stranger.SOPInstanceUID = generate_uid()
    stranger.SeriesInstanceUID = generate_uid()
    stranger.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="own study"):
        build_kos(
            key_slices=[headers[0]], key_images=[stranger], sr=sr, algorithm=ALGORITHM, uids=uids
        )
    incomplete = Dataset()
    incomplete.SOPClassUID = SecondaryCaptureImageStorage
    with pytest.raises(ValueError, match="lacks SOPInstanceUID"):
        build_kos(
            key_slices=[headers[0]],
            key_images=[incomplete],
            sr=sr,
            algorithm=ALGORITHM,
            uids=uids,
        )


def job_files(
    series: NoduleSeries, tmp_path: Path, settings: Settings, *, with_findings: bool = True
) -> tuple[list[Artefact], list[Path]]:
    """Write the series as files and the job's artefacts; returns (artefacts, CT paths)."""
    paths = []
    for number, ds in enumerate(series.datasets):
        path = tmp_path / "ct" / f"{number:03d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    headers, findings = build_inputs(series, with_findings=with_findings)
    inputs = JobInputs(
        job_id="job-1",
        study_instance_uid=series.study_uid,
        version=1,
        algorithm=ALGORITHM,
        uids=OutputUids(series.study_uid, 1),
        headers=headers,
        paths=paths,
        findings=findings,
        supersedes_version=None,
    )
    return write_artefacts(settings, inputs), paths


def test_the_kos_is_written_and_sent_after_what_it_flags(
    tmp_path: Path, settings: Settings
) -> None:
    artefacts, _ = job_files(two_nodules(), tmp_path, settings)
    kinds = [a.kind for a in artefacts]
    assert kinds == ["seg", "sr", "key-image-1", "key-image-2", "kos"]
    kos = artefacts[-1]
    assert kos.path.name == "kos.dcm"
    assert dcmread(kos.path).SOPInstanceUID == kos.sop_instance_uid


def test_no_findings_no_kos(tmp_path: Path, settings: Settings) -> None:
    artefacts, _ = job_files(two_nodules(), tmp_path, settings, with_findings=False)
    assert [a.kind for a in artefacts] == ["sr"]
    assert not (artefacts[0].path.parent / "kos.dcm").exists()


def test_dciodvfy_finds_no_error_in_any_artefact(tmp_path: Path, settings: Settings) -> None:
    artefacts, _ = job_files(two_nodules(), tmp_path, settings)
    assert {a.kind.split("-")[0] for a in artefacts} == {"seg", "key", "sr", "kos"}
    for artefact in artefacts:
        errors, warnings = dciodvfy(artefact.path)
        assert errors == [], (artefact.kind, errors)
        unexpected = [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)]
        assert unexpected == [], (artefact.kind, unexpected)


def test_dcentvfy_finds_no_broken_reference_across_the_job(
    tmp_path: Path, settings: Settings
) -> None:
    artefacts, ct = job_files(two_nodules(), tmp_path, settings)
    errors, _ = dcentvfy([*ct, *(a.path for a in artefacts)])
    assert errors == []
    # The check can fail: without the key images, the KOS's references to them are broken.
    kept = [a.path for a in artefacts if not a.kind.startswith("key-image")]
    errors, _ = dcentvfy([*ct, *kept])
    assert errors and all("Missing SOPInstanceUID that was referenced" in e for e in errors)
