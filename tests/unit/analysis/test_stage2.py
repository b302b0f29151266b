"""Second stage: patches, calibration, the operating point, the 3 mm rule and masses."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from services.analysis.config import AnalysisConfig
from services.analysis.findings import FindingResult
from services.analysis.masses import as_mass, merge_masses
from services.analysis.patches import PATCH, sample_cube
from services.analysis.pipeline import analyze_volume
from services.analysis.reporting import reportable
from services.analysis.stage2 import (
    Calibration,
    Stage2,
    expected_calibration_error,
    fit_platt,
)
from tests.unit.analysis.chest import GGN_HU, FakeModel, Nodule, chest, volume_of
from tests.unit.analysis.stub_stage2 import stub_stage2_onnx

SPACING = (1.25, 1.5, 1.5)


def _finding(diameter: float, confidence: float, **kw: object) -> FindingResult:
    base = FindingResult(
        center_mm=(0.0, 0.0, 0.0),
        diameter_mm=diameter,
        long_axis_mm=diameter,
        short_axis_mm=diameter,
        volume_mm3=1.0,
        mean_hu=0.0,
        kind="solid",
        confidence=confidence,
        lung_rads="2",
        bbox=(0, 0, 0, 2, 2, 2),
        mask=np.ones((2, 2, 2), dtype=bool),
    )
    return base.replace(**kw)


def test_platt_fit_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    truth = Calibration(a=0.5, b=-1.0)
    labels = (rng.random(len(logits)) < truth(logits)).astype(int)
    fitted = fit_platt(logits.tolist(), labels.tolist())
    assert fitted.a == pytest.approx(0.5, abs=0.05) and fitted.b == pytest.approx(-1.0, abs=0.1)
    good, _ = expected_calibration_error(fitted(logits).tolist(), labels.tolist())
    raw, table = expected_calibration_error(Calibration()(logits).tolist(), labels.tolist())
    assert good < 0.02 < raw
    assert sum(n for *_, n in table) == len(logits)


def test_calibration_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Calibration(a=-1.0)
    with pytest.raises(ValueError):
        Calibration.from_dict({"type": "isotonic", "a": 1, "b": 0})
    with pytest.raises(ValueError):
        fit_platt([0.0, 1.0], [1, 1])


def test_cube_is_centred_and_reads_air_outside() -> None:
    hu = np.full((40, 40, 40), -1000.0, dtype=np.float32)
    hu[18:23, 18:23, 18:23] = 0.0
    cube = sample_cube(hu, (1.0, 1.0, 1.0), (20, 20, 20), 1.0)
    assert cube.shape == (PATCH,) * 3
    mid = PATCH // 2
    assert cube[mid, mid, mid] > 0.4 and cube[0, 0, 0] == pytest.approx(-1.0)
    far = sample_cube(hu, (1.0, 1.0, 1.0), (500, 500, 500), 1.0)
    assert np.all(far == -1.0)


def test_stage2_scores_solid_above_ground_glass() -> None:
    session = ort.InferenceSession(stub_stage2_onnx(), providers=["CPUExecutionProvider"])
    stage2 = Stage2(session, Calibration())
    hu = chest(
        spacing=SPACING,
        nodules=(
            Nodule((20.0, 50.0, 40.0), (6.0, 6.0, 6.0)),
            Nodule((40.0, 60.0, 88.0), (5.0, 5.0, 5.0), hu=GGN_HU),
        ),
    )
    p = stage2.score(hu, SPACING, [(20.0, 50.0, 40.0), (40.0, 60.0, 88.0)])
    assert p[0] > 0.99 and p[1] < 0.01


def test_stage2_refuses_a_network_with_other_inputs() -> None:

    class Session:
        def get_inputs(self) -> list[object]:
            return [type("I", (), {"name": "x"})()]

    with pytest.raises(ValueError, match="patch"):
        Stage2(Session(), Calibration())


def test_reportable_applies_the_operating_point_and_the_3mm_rule() -> None:
    config = AnalysisConfig(threshold=0.1, report_min_confidence=0.4)
    kept = reportable(
        [
            _finding(8.0, 0.9),
            _finding(8.0, 0.39),  # under the operating point
            _finding(2.94, 0.9),  # reported as 2.9 mm
            _finding(2.96, 0.9),  # reported as 3.0 mm: kept
            _finding(45.0, 0.2, finding_type="mass"),  # masses have their own floor
        ],
        config,
    )
    assert [(round(f.diameter_mm, 2), f.confidence) for f in kept] == [
        (8.0, 0.9),
        (2.96, 0.9),
        (45.0, 0.2),
    ]


def test_nodule_candidates_touching_a_mass_are_dropped() -> None:
    mask = np.ones((10, 10, 10), dtype=bool)
    volume = volume_of(np.zeros((30, 30, 30), dtype=np.float32), (1.0, 1.0, 1.0))
    mass = as_mass(
        _finding(40.0, 0.9, bbox=(5, 5, 5, 15, 15, 15), mask=mask, kind="part-solid"), volume
    )
    assert mass.finding_type == "mass" and mass.lung_rads == "4B" and mass.kind == "solid"
    fringe = _finding(9.0, 0.8, bbox=(14, 14, 14, 17, 17, 17), mask=np.ones((3, 3, 3), bool))
    apart = _finding(9.0, 0.8, bbox=(24, 24, 24, 27, 27, 27), mask=np.ones((3, 3, 3), bool))
    merged = merge_masses([fringe, apart], [mass])
    assert merged == [mass, apart]


def test_pipeline_with_a_second_stage_reports_only_above_the_operating_point() -> None:
    session = ort.InferenceSession(stub_stage2_onnx(), providers=["CPUExecutionProvider"])
    hu = chest(
        spacing=SPACING,
        nodules=(
            Nodule((20.0, 50.0, 40.0), (6.0, 6.0, 6.0)),
            Nodule((40.0, 60.0, 88.0), (5.0, 5.0, 5.0), hu=GGN_HU),
        ),
    )
    model = FakeModel()
    model.config = AnalysisConfig(
        threshold=0.5, stage2=Stage2(session, Calibration()), report_min_confidence=0.5
    )
    volume = volume_of(hu, SPACING)
    reported = analyze_volume(volume, model)
    assert [f.kind for f in reported] == ["solid"] and reported[0].confidence > 0.99
    everything = analyze_volume(volume, model, all_candidates=True)
    assert sorted(f.kind for f in everything) == ["ground-glass", "solid"]
