"""DICOM CT Image Storage output of the phantom, plus ``truth.json`` and ``mask.npz``.

Patient, General Study, General Series, Frame of Reference, General Equipment, Image Plane,
Image Pixel, CT Image, VOI LUT and SOP Common modules (PS3.3 A.3), Explicit VR Little Endian,
uncompressed. Variations a real archive shows: signed or unsigned pixels with different
rescale intercepts (and, in the wider domains, slopes), PixelPaddingValue outside the
reconstruction circle, InstanceNumber increasing toward the head or the feet (and sometimes
not in spatial order), file names that say nothing about order, and (wider domains) the
ImageOrientationPatient of head/feet-first, supine/prone positions. Every UID is derived
from the seed, so reruns are identical.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from services.analysis.geometry import Volume
from services.core.uids import derived_uid

if TYPE_CHECKING:
    from services.modeling.phantom.generate import PhantomCase

_FIRST = ("ALEX", "SAM", "ROBIN", "KIM", "JO", "CHRIS", "PAT", "LEE", "NOA", "MIKA")
_LAST = ("PHANTOM", "SYNTH", "MODEL", "TESTCASE", "SIMUL")


def _base(case: PhantomCase, seed: int, study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    rng = np.random.default_rng([seed, 0x44434D])
    sc = case.meta["scanner"]
    assert isinstance(sc, dict)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    date = f"2026{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    time_ = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time_
    ds.AccessionNumber = f"PH{seed % 10**8:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "noduleflow-phantom"
    ds.ManufacturerModelName = "synthetic chest CT"
    ds.InstitutionName = "noduleflow"
    ds.ReferringPhysicianName = ""
    world = case.meta.get("world")
    contrast = isinstance(world, dict) and world.get("contrast") is not None
    ds.StudyDescription = f"CT CHEST {'WITH' if contrast else 'WITHOUT'} CONTRAST"
    ds.SeriesDescription = f"Chest {sc['thickness']}mm {sc['kernel']}"
    ds.PatientName = f"{_LAST[seed % len(_LAST)]}^{_FIRST[(seed // 7) % len(_FIRST)]}"
    ds.PatientID = f"PHANTOM-{seed:06d}"
    ds.PatientBirthDate = f"19{int(rng.integers(30, 90)):02d}0101"
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.PatientAge = f"{int(rng.integers(45, 85)):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = sc["thickness"]
    ds.SpacingBetweenSlices = sc["spacing"]
    ds.KVP = sc["kvp"]
    ds.ConvolutionKernel = sc["kernel"]
    ds.PatientPosition = sc.get("patient_position", "FFS" if sc["feet_first"] else "HFS")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = int(rng.integers(2, 9))
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [_number(v) for v in (*case.volume.row_dir, *case.volume.col_dir)]
    ds.PixelSpacing = [case.volume.spacing[1], case.volume.spacing[2]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = case.volume.shape[1], case.volume.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = sc["bits_stored"]
    ds.HighBit = sc["bits_stored"] - 1
    ds.PixelRepresentation = sc["pixel_representation"]
    ds.PixelPaddingValue = sc["padding_stored"]
    ds.RescaleIntercept = sc["rescale_intercept"]
    ds.RescaleSlope = _number(float(sc.get("rescale_slope", 1)))
    ds.RescaleType = "HU"
    ds.WindowCenter = [-600, 40]
    ds.WindowWidth = [1500, 400]
    ds.AcquisitionNumber = 1
    return ds


def _number(value: float) -> int | float:
    """Whole numbers as integers (the files v1 always wrote), others as they are."""
    return int(value) if float(value).is_integer() else float(value)


def _instance_order(
    n: int, feet_first: bool, shuffled: bool, seed: int, k_up: bool = True
) -> list[int]:
    """InstanceNumber for each k (``k_up``: k = 0 is the lowest z, else the highest)."""
    numbers = list(range(1, n + 1)) if feet_first == k_up else list(range(n, 0, -1))
    if shuffled:
        perm = np.random.default_rng([seed, 0x494E]).permutation(n)
        numbers = [int(perm[k]) + 1 for k in range(n)]
    return numbers


def write_series(
    case: PhantomCase, outdir: Path, *, seed: int
) -> tuple[str, str, list[Path], Volume]:
    outdir.mkdir(parents=True, exist_ok=True)
    study_uid = derived_uid("noduleflow-phantom", str(seed), "study")
    series_uid = derived_uid("noduleflow-phantom", str(seed), "series")
    frame_uid = derived_uid("noduleflow-phantom", str(seed), "frame")
    sc = case.meta["scanner"]
    assert isinstance(sc, dict)
    vol = case.volume
    n = vol.shape[0]
    base = _base(case, seed, study_uid, series_uid, frame_uid)
    intercept = float(sc["rescale_intercept"])
    slope = float(sc.get("rescale_slope", 1.0))
    dtype = np.int16 if sc["pixel_representation"] == 1 else np.uint16
    lo, hi = (np.iinfo(dtype).min, np.iinfo(dtype).max)
    if sc["pixel_representation"] == 0:
        hi = 2 ** int(sc["bits_stored"]) - 1
    numbers = _instance_order(
        n,
        bool(sc["feet_first"]),
        bool(sc["shuffled_instances"]),
        seed,
        k_up=vol.slice_dir[2] > 0,
    )
    names = np.random.default_rng([seed, 0x46]).permutation(n)
    sop_uids: list[str] = []
    files: list[Path] = []
    for k in range(n):
        sop = UID(derived_uid("noduleflow-phantom", str(seed), "sop", str(k)))
        ds = base.copy()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = numbers[k]
        position = vol.index_to_lps(np.array([k, 0.0, 0.0]))
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.SliceLocation = round(float(position[2]), 4)
        values = vol.hu[k] - intercept if slope == 1.0 else (vol.hu[k] - intercept) / slope
        stored = np.clip(np.round(values), lo, hi).astype(dtype)
        ds.PixelData = stored.tobytes()
        path = outdir / f"IM{int(names[k]):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop_uids.append(sop)
        files.append(path)
    volume = replace(vol, sop_uids=tuple(sop_uids))
    _write_truth(case, volume, outdir, seed, study_uid, series_uid)
    return study_uid, series_uid, files, volume


def _write_truth(
    case: PhantomCase, volume: Volume, outdir: Path, seed: int, study_uid: str, series_uid: str
) -> None:
    geometry = {
        "origin": list(volume.origin),
        "row_dir": list(volume.row_dir),
        "col_dir": list(volume.col_dir),
        "slice_dir": list(volume.slice_dir),
    }
    truth = {
        "seed": seed,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "spacing": list(volume.spacing),
        "shape": list(volume.shape),
        "geometry": geometry,
        "nodules": [n.to_dict() for n in case.nodules],
        "scanner": case.meta["scanner"],
        "meta": {k: v for k, v in case.meta.items() if k not in ("scanner", "timing_s")},
    }
    (outdir / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    np.savez_compressed(
        outdir / "mask.npz",
        labels=case.labels,
        lungs=case.lungs,
        spacing=np.asarray(volume.spacing),
        origin=np.asarray(volume.origin),
        row_dir=np.asarray(volume.row_dir),
        col_dir=np.asarray(volume.col_dir),
        slice_dir=np.asarray(volume.slice_dir),
    )
