"""Missing slices inside a regular stack: the grid, the fill, the findings kept, the ranges."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.analysis.errors import AnalysisError
from services.analysis.findings import FindingResult
from services.analysis.gaps import Grid, fill, grid_of, missing_ranges, settle
from services.analysis.pipeline import analyze_files
from services.analysis.series import choose_series
from services.core.contracts import JobDetails, MissingSlices
from tests.unit.analysis.chest import GGN_HU, FakeModel, Nodule, chest, write_volume
from tests.unit.analysis.test_series import stack

SPACING = (1.25, 1.5, 1.5)
SOLID = Nodule((20.0, 50.0, 40.0), (6.0, 6.0, 6.0))  # truth slice 20, 12 mm
GGN = Nodule((40.0, 60.0, 88.0), (5.0, 5.0, 5.0), hu=GGN_HU)  # truth slice 40, 10 mm


def test_grid_of_places_slices_and_refuses_fractional_steps() -> None:
    grid = grid_of([0.0, 1.25, 2.5, 6.25, 7.5], 1.25, 0.125)
    assert grid == Grid((0, 1, 2, 5, 6))
    assert grid.size == 7 and grid.filled == (3, 4) and grid.runs() == ((3, 4),)
    assert not grid.complete and Grid((0, 1, 2)).complete
    assert grid_of([0.0, 1.25, 3.1], 1.25, 0.125) is None  # 1.48 steps: not on the grid
    assert missing_ranges(grid, -10.0, 1.25) == ((-6.2, -5.0),)


def test_fill_interpolates_between_the_received_neighbours() -> None:
    hu = np.zeros((5, 2, 2), dtype=np.float32)
    hu[0], hu[4] = -1000.0, 0.0
    fill(hu, Grid((0, 4)))
    assert hu[:, 0, 0].tolist() == pytest.approx([-1000, -750, -500, -250, 0])


def _finding(k0: int, k1: int) -> FindingResult:
    return FindingResult(
        center_mm=(0.0, 0.0, 0.0),
        diameter_mm=6.0,
        long_axis_mm=6.0,
        short_axis_mm=6.0,
        volume_mm3=100.0,
        mean_hu=0.0,
        kind="solid",
        confidence=0.9,
        lung_rads="3",
        bbox=(k0, 0, 0, k1, 2, 2),
        mask=np.ones((k1 - k0, 2, 2), dtype=bool),
    )


def test_settle_drops_findings_touching_or_bordering_the_gap_and_reindexes_the_rest() -> None:
    grid = Grid((0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13))  # grid slices 5..7 missing
    above, bordering, inside, below = (
        _finding(0, 3),
        _finding(2, 5),
        _finding(4, 7),
        _finding(10, 12),
    )
    kept, dropped = settle([above, bordering, inside, below], grid)
    assert dropped == 2
    assert [f.bbox[0::3] for f in kept] == [(0, 3), (7, 9)]  # below: grid 10..11 = received 7..8
    assert settle([below], Grid((0, 1, 2))) == ([below], 0)


def test_series_with_a_middle_gap_is_planned_on_its_grid() -> None:
    headers = stack()  # 60 slices, 1.25 mm
    plan = choose_series(headers[:20] + headers[40:])
    assert len(plan.slices) == 40 and plan.grid.size == 60 and len(plan.grid.filled) == 20
    assert plan.coverage_mm == pytest.approx(59 * 1.25)
    assert "20 missing slices filled" in plan.reason
    # A complete series beats a gapped one that covers as much.
    other = stack("1.2.4")
    assert choose_series(headers[:20] + headers[40:] + other).series_instance_uid == "1.2.4"


def test_series_missing_more_than_half_or_off_grid_is_still_refused() -> None:
    headers = stack()
    with pytest.raises(AnalysisError, match="missing slices"):
        choose_series(headers[:15] + headers[50:])  # 35 of 60 missing
    shifted = [
        replace(h, position=(-180.0, -180.0, -k * 1.25 - 0.6)) for k, h in enumerate(headers)
    ]
    with pytest.raises(AnalysisError, match="inconsistent-geometry"):
        choose_series(headers[:30] + shifted[30:])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    hu = chest(spacing=SPACING, nodules=(SOLID, GGN))
    return write_volume(hu, tmp_path_factory.mktemp("gapped"), spacing=SPACING)


def test_gap_through_a_nodule_drops_it_and_names_the_missing_range(written) -> None:
    paths, uids = written
    gone = range(16, 25)  # truth slices through the solid nodule (z -20.0 .. -30.0)
    result = analyze_files([p for k, p in enumerate(paths) if k not in gone], FakeModel())
    assert [f.kind for f in result.findings] == ["ground-glass"]
    missing = result.missing
    assert missing is not None
    assert missing.missing_z_mm == ((-30.0, -20.0),) and missing.slices == 9
    # The fill is smooth but not anatomy: the ring it blends at each lung's border looks
    # like tissue to the stub model; nothing made in or next to the filled slab is reported.
    assert missing.dropped_findings >= 2
    assert result.geometry.shape[0] == 64 and len(result.sop_uids) == 55
    assert set(result.sop_uids) == set(uids) - {uids[k] for k in gone}
    (ggn,) = result.findings
    k0, k1 = ggn.bbox[0], ggn.bbox[3]
    assert ggn.source_sop_uids == result.sop_uids[k0:k1] and uids[40] in ggn.source_sop_uids
    assert ggn.center_mm[2] == pytest.approx(-40 * 1.25, abs=0.1)


def test_gap_away_from_the_nodules_keeps_both_on_the_received_slices(written) -> None:
    paths, uids = written
    gone = range(50, 56)  # feet end: before both nodules along the normal, so boxes move
    result = analyze_files([p for k, p in enumerate(paths) if k not in gone], FakeModel())
    assert sorted(f.kind for f in result.findings) == ["ground-glass", "solid"]
    assert result.missing is not None and result.missing.missing_z_mm == ((-68.8, -62.5),)
    for finding, truth in zip(result.findings, (20, 40), strict=True):
        k0, k1 = finding.bbox[0], finding.bbox[3]
        assert finding.source_sop_uids == result.sop_uids[k0:k1]
        assert uids[truth] in finding.source_sop_uids
        assert finding.center_mm[2] == pytest.approx(-truth * 1.25, abs=0.1)


def test_missing_slices_travel_in_the_job_details_and_read_back() -> None:
    missing = MissingSlices(missing_z_mm=((-30.0, -20.0),), slices=9, dropped_findings=1)
    stored = JobDetails(series_uid="1.2", sop_uids=("1.2.1",), missing=missing).to_stored()
    assert stored["missing"] == {
        "missing_z_mm": [[-30.0, -20.0]],
        "slices": 9,
        "dropped_findings": 1,
    }
    assert JobDetails.parse(stored).missing == missing
    assert "missing" not in JobDetails(series_uid="1.2").to_stored()
    assert JobDetails.parse({**stored, "missing": "garbage"}).missing is None
    assert "lacks 9 slices (z -30.0 to -20.0 mm)" in missing.summary()
    assert "1 finding at their edge not reported" in missing.summary(ranges=False)
