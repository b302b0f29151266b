"""The shipped model on real chest CT (Lung-PET-CT-Dx, CC BY 4.0; tests/data/realct).

Through the whole file pipeline: the A0001 adenocarcinoma (a ~70 mm mass) must be found on
both reconstructions and reported as a mass, Lung-RADS 4B or 4X; the two reconstructions
must agree; false positives stay at or under one per scan; the 8 mm A0002 series is refused
with a reason a person can act on. None of these series was used to train or tune the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.analysis.engine import Engine
from services.core.settings import default_model_dir
from services.modeling.evaluation.realct import agreement, run_series

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "data" / "realct"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(default_model_dir(), "cpu")


@pytest.fixture(scope="module")
def a0001(engine):
    return [run_series(DATA / f"lung-pet-ct-dx-A0001-kernel{k}", engine) for k in "BL"]


def test_the_mass_is_found_and_reported_as_a_mass_on_both_kernels(a0001) -> None:
    for outcome in a0001:
        assert outcome.refused is None
        (hit,) = outcome.lesions_hit
        assert hit is not None, f"{outcome.name}: mass missed; findings {outcome.findings}"
        assert hit["finding_type"] == "mass" and hit["diameter_mm"] >= 30.0
        assert hit["lung_rads"] in ("4B", "4X")


def test_false_positives_stay_at_or_under_one_per_scan(a0001) -> None:
    assert sum(o.false_positives for o in a0001) / len(a0001) <= 1.0


def test_the_two_reconstructions_agree(a0001) -> None:
    assert agreement(*a0001), [o.findings for o in a0001]


def test_thick_slices_are_refused_with_a_reason(engine) -> None:
    outcome = run_series(DATA / "lung-pet-ct-dx-A0002-8mm", engine)
    assert outcome.refused == "no-usable-series"
    assert "8.0 mm" in outcome.detail and "thin-slice" in outcome.detail
