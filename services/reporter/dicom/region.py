"""A finding's 2D image region on its key slice, for the SR's TID 1410 planar ROI group.

Viewers that draw SR measurements on the images (OHIF, Weasis) need a 2D ``SCOORD`` that
points at an image; a SEG reference or a ``SCOORD3D`` alone is not drawn (OHIF issue
#3390). The region is the outline of the finding on the slice where its cross-section is
largest (the slice of its key image), as a closed ``POLYLINE`` along the pixel borders
(a one-pixel finding is a unit square). ``Region2D`` also takes a ``POINT`` (a centre).

Coordinates follow PS3.3 C.18.6.1.2: column then row, in pixels, with ``0.0\\0.0`` the
top left corner of the top left pixel (so the pixel at row ``r``, column ``c`` covers
``[c, c + 1] x [r, r + 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from services.reporter.dicom.model import NoduleFinding

POLYLINE, POINT = "POLYLINE", "POINT"

# Direction of travel (dx, dy) -> the directions to try next, most clockwise first: walking
# clockwise with the pixels on the right, this follows the outer boundary tightly.
_NEXT = {
    (1, 0): ((0, -1), (1, 0), (0, 1)),
    (0, 1): ((1, 0), (0, 1), (-1, 0)),
    (-1, 0): ((0, 1), (-1, 0), (0, -1)),
    (0, -1): ((-1, 0), (0, -1), (1, 0)),
}


@dataclass(frozen=True)
class Region2D:
    """A 2D region on one source image: ``graphic_type`` POLYLINE (closed) or POINT."""

    graphic_type: str
    points: tuple[tuple[float, float], ...]  # (column, row) pixel coordinates
    slice_index: int  # volume slice k

    def __post_init__(self) -> None:
        if self.graphic_type == POINT:
            if len(self.points) != 1:
                raise ValueError("a POINT region has exactly one point")
        elif self.graphic_type == POLYLINE:
            if len(self.points) < 4 or self.points[0] != self.points[-1]:
                raise ValueError("a closed POLYLINE needs three corners and ends where it starts")
        else:
            raise ValueError(f"unsupported graphic type {self.graphic_type!r}")

    def graphic_data(self) -> NDArray[np.float32]:
        """The points as highdicom's ``ImageRegion`` takes them (n x 2, column then row)."""
        return np.asarray(self.points, dtype=np.float32)


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, count = ndimage.label(mask)  # 4-connected
    if count <= 1:
        return ndimage.binary_fill_holes(mask).astype(bool)
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    keep = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(keep).astype(bool)


def _edges(mask: NDArray[np.bool_]) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Border edges of ``mask`` as vertex -> outgoing unit steps, clockwise on screen."""
    padded = np.pad(mask, 1)
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in zip(*np.nonzero(mask), strict=True):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:  # top: left to right
            out.setdefault((c, r), []).append((1, 0))
        if not padded[pr, pc + 1]:  # right: downwards
            out.setdefault((c + 1, r), []).append((0, 1))
        if not padded[pr + 1, pc]:  # bottom: right to left
            out.setdefault((c + 1, r + 1), []).append((-1, 0))
        if not padded[pr, pc - 1]:  # left: upwards
            out.setdefault((c, r + 1), []).append((0, -1))
    return out


def outline(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Corners of the outer border of the largest component of a 2D mask, clockwise on
    screen, as (column, row); closed (the first corner repeated at the end). Empty when
    the mask is."""
    component = _largest_component(np.asarray(mask, dtype=bool))
    if not component.any():
        return []
    edges = _edges(component)
    rows, cols = np.nonzero(component)
    first = int(rows.min())
    start = (int(cols[rows == first].min()), first)  # top left corner, top edge starts
    vertex, step = start, (1, 0)
    edges[start].remove(step)
    corners = [start]
    for _ in range(4 * component.size + 4):
        vertex = (vertex[0] + step[0], vertex[1] + step[1])
        if vertex == start:
            break
        choices = edges.get(vertex, [])
        turn = next(s for s in _NEXT[step] if s in choices)
        choices.remove(turn)
        if turn != step:
            corners.append(vertex)
        step = turn
    corners.append(start)
    return corners


def key_region(finding: NoduleFinding) -> Region2D | None:
    """The finding's region on its key slice (``largest_slice``); None without a mask."""
    if not finding.has_mask:
        return None
    k = finding.largest_slice()
    k0, j0, i0 = finding.bbox[:3]
    local = finding.mask[k - k0]
    points = tuple((float(c + i0), float(r + j0)) for c, r in outline(local))
    return Region2D(POLYLINE, points, k)
