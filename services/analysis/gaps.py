"""Missing slices inside an otherwise regular stack (pure).

A series whose received slices all lie on one regular grid of its median step, but with some
grid positions empty (slices refused and never resent, a sender that lost some), is analysed
on the full grid rather than refused:

* the empty slices are filled by linear interpolation between the received slices on either
  side (:func:`fill`). Air would cut the body in two and join the lungs to the air outside,
  which breaks the lung mask; interpolation keeps the anatomy continuous;
* nothing is reported from the filled slab: a finding whose box comes within
  :data:`EDGE_SLICES` of a filled slice is dropped (:func:`settle`), so an interpolated blob
  never becomes a nodule and a nodule cut by the gap is never measured as if it were whole;
* the kept findings' boxes are moved back onto the received slices (``k`` indexes the
  slices that exist), so the reports and the SEG refer only to images that exist;
* the missing z ranges (first and last missing slice position along the normal, as the
  receiver records them) go with the result.

A series missing more slices than it has (:data:`MAX_MISSING_FRACTION`) or whose steps are not
whole multiples of its step is still refused by the series rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.analysis.findings import FindingResult

#: a series may miss at most this fraction of its grid's slices
MAX_MISSING_FRACTION = 0.5
#: a finding whose box comes this close (in slices) to a filled slice is not reported
EDGE_SLICES = 1


@dataclass(frozen=True)
class Grid:
    """Where the received slices sit on the regular grid: ``index[k]`` is the grid slice of
    received slice ``k`` (strictly increasing, starting at 0)."""

    index: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.index[-1] + 1 if self.index else 0

    @property
    def complete(self) -> bool:
        return len(self.index) == self.size

    @property
    def filled(self) -> tuple[int, ...]:
        """Grid slices no received slice fills, in order."""
        present = set(self.index)
        return tuple(k for k in range(self.size) if k not in present)

    def runs(self) -> tuple[tuple[int, int], ...]:
        """Runs of filled grid slices as inclusive ``(first, last)`` pairs."""
        return tuple((a + 1, b - 1) for a, b in itertools.pairwise(self.index) if b - a > 1)


def grid_of(along: Sequence[float], step: float, tolerance: float) -> Grid | None:
    """The grid of sorted slice positions with spacing ``step``, or None when some distance
    between neighbours is not a whole number of steps within ``tolerance`` mm."""
    if step <= 0 or not along:
        return None
    index = [0]
    for a, b in itertools.pairwise(along):
        distance = b - a
        steps = round(distance / step)
        if steps < 1 or abs(distance - steps * step) > tolerance:
            return None
        index.append(index[-1] + steps)
    return Grid(tuple(index))


def missing_ranges(grid: Grid, first_mm: float, step: float) -> tuple[tuple[float, float], ...]:
    """The filled runs as positions along the normal: first and last missing slice, in mm."""
    return tuple(
        (round(first_mm + lo * step, 1), round(first_mm + hi * step, 1)) for lo, hi in grid.runs()
    )


def fill(hu: NDArray[np.float32], grid: Grid) -> None:
    """Fill each missing run of ``hu`` (grid order) in place by linear interpolation between
    the received slices on either side; every run is interior, so both exist."""
    for lo, hi in grid.runs():
        below, above = hu[lo - 1], hu[hi + 1]
        span = hi - lo + 2
        for k in range(lo, hi + 1):
            t = np.float32((k - lo + 1) / span)
            np.multiply(below, 1 - t, out=hu[k])
            hu[k] += t * above


def _near_filled(bbox: tuple[int, ...], filled: Sequence[int]) -> bool:
    k0, k1 = bbox[0] - EDGE_SLICES, bbox[3] - 1 + EDGE_SLICES
    return any(k0 <= k <= k1 for k in filled)


def settle(findings: Sequence[FindingResult], grid: Grid) -> tuple[list[FindingResult], int]:
    """The findings to report from a volume with filled slices, their boxes moved onto the
    received slices, and how many were dropped for touching (or bordering) a filled slab."""
    if grid.complete:
        return list(findings), 0
    filled = grid.filled
    received = {g: k for k, g in enumerate(grid.index)}
    kept: list[FindingResult] = []
    for finding in findings:
        if _near_filled(finding.bbox, filled):
            continue
        k0, j0, i0, k1, j1, i1 = finding.bbox
        start = received[k0]
        kept.append(finding.replace(bbox=(start, j0, i0, start + (k1 - k0), j1, i1)))
    return kept, len(findings) - len(kept)
