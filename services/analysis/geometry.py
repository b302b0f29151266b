"""Volume geometry: voxel indices ↔ patient LPS millimetres (PS3.3 C.7.6.2.1.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Volume:
    """An HU volume indexed ``(k, j, i)`` = (slice, row, column).

    ``origin`` is the LPS position of voxel (0, 0, 0) (ImagePositionPatient of the first
    slice); ``row_dir`` is the direction of increasing column index ``i``
    (ImageOrientationPatient[0:3]), ``col_dir`` that of increasing row index ``j``
    (ImageOrientationPatient[3:6]) and ``slice_dir`` that of increasing ``k``.
    ``spacing`` is ``(slice step, row spacing, column spacing)`` in mm, i.e.
    ``(dk, PixelSpacing[0], PixelSpacing[1])``.
    """

    hu: NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    sop_uids: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        k, j, i = self.hu.shape
        return int(k), int(j), int(i)

    def affine(self) -> NDArray[np.float64]:
        """4×4 matrix mapping homogeneous ``(k, j, i, 1)`` to ``(x, y, z, 1)`` in LPS."""
        dk, dj, di = self.spacing
        matrix = np.eye(4)
        matrix[:3, 0] = np.asarray(self.slice_dir) * dk
        matrix[:3, 1] = np.asarray(self.col_dir) * dj
        matrix[:3, 2] = np.asarray(self.row_dir) * di
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_lps(self, kji: NDArray[np.floating] | list[float]) -> NDArray[np.float64]:
        """LPS mm of (possibly fractional) voxel indices; accepts shape (3,) or (n, 3)."""
        points = np.atleast_2d(np.asarray(kji, dtype=np.float64))
        homogeneous = np.c_[points, np.ones(len(points))]
        lps = (self.affine() @ homogeneous.T).T[:, :3]
        return lps[0] if np.ndim(kji) == 1 else lps

    def lps_to_index(self, lps: NDArray[np.floating] | list[float]) -> NDArray[np.float64]:
        """Fractional voxel indices ``(k, j, i)`` of LPS points; shape (3,) or (n, 3)."""
        points = np.atleast_2d(np.asarray(lps, dtype=np.float64))
        homogeneous = np.c_[points, np.ones(len(points))]
        kji = (np.linalg.inv(self.affine()) @ homogeneous.T).T[:, :3]
        return kji[0] if np.ndim(lps) == 1 else kji

    def with_hu(self, hu: NDArray[np.float32], offset: tuple[int, int, int] = (0, 0, 0)) -> Volume:
        """A sub-volume (e.g. a crop starting at voxel ``offset``) with the same geometry."""
        origin = tuple(self.index_to_lps(np.asarray(offset, dtype=np.float64)))
        k0 = offset[0]
        uids = self.sop_uids[k0 : k0 + hu.shape[0]] if self.sop_uids else ()
        return Volume(
            hu=hu,
            spacing=self.spacing,
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            row_dir=self.row_dir,
            col_dir=self.col_dir,
            slice_dir=self.slice_dir,
            sop_uids=tuple(uids),
        )
