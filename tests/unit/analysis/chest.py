"""Tiny synthetic chests (HU volumes and DICOM series) and a fake model for analysis tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from services.analysis.config import AnalysisConfig
from services.analysis.geometry import Volume
from tests.factories.dicom import ct_slice

BODY_HU, LUNG_HU, TABLE_HU, AIR_HU = 60.0, -850.0, 300.0, -1000.0
SOLID_HU, GGN_HU = 0.0, -600.0


@dataclass(frozen=True)
class Nodule:
    center_kji: tuple[float, float, float]
    radius_mm: tuple[float, float, float]  # (k, j, i) semi-axes
    hu: float = SOLID_HU
    core_radius_mm: float = 0.0  # > 0: solid core of SOLID_HU inside a nodule of ``hu``


def ellipsoid(
    shape: Sequence[int],
    spacing: Sequence[float],
    center: Sequence[float],
    radii_mm: Sequence[float],
) -> NDArray[np.bool_]:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist = sum(
        ((g - c) * s / r) ** 2 for g, c, s, r in zip(grid, center, spacing, radii_mm, strict=True)
    )
    return np.asarray(dist <= 1.0)


def chest(
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing: tuple[float, float, float] = (1.25, 1.5, 1.5),
    nodules: Sequence[Nodule] = (),
) -> NDArray[np.float32]:
    """Air around an elliptic body on a table, two lungs, and the given nodules."""
    k, rows, cols = shape
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    cj, ci = rows * 0.45, cols / 2
    body = ellipsoid((1, rows, cols), (1, *spacing[1:]), (0, cj, ci), (1, 70, 90))[0]
    hu[:, body] = BODY_HU
    table_row = int(cj + 70 / spacing[1]) + 3
    hu[:, table_row : table_row + 4, 10:-10] = TABLE_HU
    hu[:, table_row + 1 : table_row + 3, 14:-14] = AIR_HU  # air pocket inside the table
    for side in (-1, 1):
        centre = (k / 2, cj, ci + side * 40 / spacing[2])
        hu[ellipsoid(shape, spacing, centre, (k * spacing[0] * 0.6, 45, 30))] = LUNG_HU
    for n in nodules:
        hu[ellipsoid(shape, spacing, n.center_kji, n.radius_mm)] = n.hu
        if n.core_radius_mm:
            core = ellipsoid(shape, spacing, n.center_kji, (n.core_radius_mm,) * 3)
            hu[core] = SOLID_HU
    return hu


class FakeModel:
    """Probability 0.9 wherever HU looks like nodule tissue, else 0 (body is 60 HU)."""

    name, version, provider = "fake", "0", "FakeProvider"
    config = AnalysisConfig(threshold=0.5)

    def __init__(self, fn: Callable[[NDArray[np.floating]], NDArray[np.float32]] | None = None):
        self.fn = fn
        self.calls: list[tuple[tuple[int, ...], tuple[float, float, float]]] = []

    def lane(self) -> AbstractContextManager[int | None]:
        return nullcontext()

    def probability(
        self,
        hu: NDArray[np.floating],
        spacing: tuple[float, float, float],
        *,
        progress: Callable[[float], None] | None = None,
    ) -> NDArray[np.float32]:
        self.calls.append((hu.shape, spacing))
        if progress is not None:
            progress(1.0)
        if self.fn is not None:
            return self.fn(hu)
        return np.where((hu >= -700) & (hu <= 20), 0.9, 0.0).astype(np.float32)


def write_volume(
    hu: NDArray[np.floating],
    outdir: Path,
    *,
    spacing: tuple[float, float, float] = (1.25, 1.5, 1.5),
    feet_first: bool = False,
    shuffle_names: bool = True,
    reverse_instance_numbers: bool = True,
    unsigned: bool = False,
    edit: Callable[[Dataset, int], None] | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> tuple[list[Path], list[str]]:
    """Write ``hu`` as an axial CT series; returns paths and SOP UIDs in volume order (k)."""
    outdir.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(7)
    names = rng.permutation(n) if shuffle_names else np.arange(n)
    paths, uids = [], []
    for k in range(n):
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, index=k, rows=rows, cols=cols)
        # Head first: k grows towards the feet (z decreases); feet first the other way round
        # with the slice normal flipped by the orientation (row direction reversed).
        z = -k * spacing[0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        if feet_first:
            # Rows run along -x, so the normal is (−1,0,0)×(0,1,0) = (0,0,−1): slices
            # ascending along the normal go down in z, which matches k here.
            ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [cols * spacing[2] / 2, -rows * spacing[1] / 2, z]
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            # normal (0,0,1): ascending along it means increasing z, i.e. k reversed.
            ds.ImagePositionPatient = [-cols * spacing[2] / 2, -rows * spacing[1] / 2, z]
        ds.InstanceNumber = (n - k) if reverse_instance_numbers else k + 1
        plane = np.asarray(hu[k])
        if unsigned:
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = -1024
            ds.PixelData = np.round(plane + 1024).astype(np.uint16).tobytes()
        else:
            ds.PixelData = np.round(plane).astype(np.int16).tobytes()
        if edit is not None:
            edit(ds, k)
        path = outdir / f"img{int(names[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return paths, uids


def volume_of(hu: NDArray[np.float32], spacing: tuple[float, float, float]) -> Volume:
    return Volume(hu=hu, spacing=spacing, sop_uids=tuple(f"1.2.3.{k}" for k in range(len(hu))))
