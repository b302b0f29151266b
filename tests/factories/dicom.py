"""Small DICOM factories for tests (the realistic phantom lives in services.modeling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    index: int,
    rows: int = 64,
    cols: int = 64,
    spacing: float = 0.7,
    thickness: float = 1.0,
    pixels: np.ndarray | None = None,
    patient_id: str = "TEST-001",
    sop_uid: str | None = None,
) -> Dataset:
    """One axial CT slice, head-first supine; z decreases with ``index``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.1"
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyDate = "20260101"
    ds.AccessionNumber = "ACC001"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.ImagePositionPatient = [-cols * spacing / 2, -rows * spacing / 2, -index * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    if pixels is None:
        rng = np.random.default_rng(index)
        pixels = rng.integers(-1000, 400, size=(rows, cols), dtype=np.int16)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    return ds


def write_ct_series(
    outdir: Path,
    n_slices: int,
    *,
    rows: int = 64,
    cols: int = 64,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> tuple[str, str, list[Path]]:
    """Write ``n_slices`` CT files; returns (study uid, series uid, paths)."""
    outdir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(0)
    base = rng.integers(-1000, 400, size=(rows, cols), dtype=np.int16)
    paths = []
    for i in range(n_slices):
        ds = ct_slice(
            study_uid=study_uid,
            series_uid=series_uid,
            index=i,
            rows=rows,
            cols=cols,
            pixels=np.roll(base, i, axis=0),
        )
        path = outdir / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, series_uid, paths
