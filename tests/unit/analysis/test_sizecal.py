"""The diameter calibration: fitting, bounds and the manifest round trip."""

from __future__ import annotations

import numpy as np
import pytest

from services.analysis.sizecal import (
    MAX_FACTOR,
    MIN_FACTOR,
    SizeCalibration,
    fit_lad,
    mean_abs_error,
)


def test_fit_recovers_a_size_dependent_bias_despite_outliers() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(4.0, 28.0, 60)
    measured = (reference + 1.5) / 1.2 + rng.normal(0.0, 0.2, 60)  # large ones too small
    measured[:4] -= 6.0  # a few gross misses (spicules cut off) must not drag the line
    cal = fit_lad(measured, reference)
    assert cal.slope == pytest.approx(1.2, abs=0.05)
    assert cal.intercept == pytest.approx(-1.5, abs=0.4)
    assert mean_abs_error(measured, reference, cal) < 0.5 * mean_abs_error(
        measured, reference, None
    )


def test_factor_is_bounded_and_neutral_for_no_measurement() -> None:
    cal = SizeCalibration(intercept=-1.0, slope=1.2)
    assert cal(10.0) == pytest.approx(11.0)
    assert cal.factor(10.0) == pytest.approx(1.1)
    assert cal.factor(0.0) == 1.0
    assert cal.factor(0.5) == MIN_FACTOR  # -0.4 mm would be nonsense
    assert SizeCalibration(intercept=30.0, slope=1.0).factor(5.0) == MAX_FACTOR


@pytest.mark.parametrize(
    "data",
    [
        {"intercept": 0.0, "slope": 5.0},
        {"intercept": float("nan"), "slope": 1.0},
        {"type": "spline", "intercept": 0.0, "slope": 1.0},
    ],
)
def test_bad_coefficients_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="size_calibration"):
        SizeCalibration.from_dict(data)


def test_round_trip_and_fit_needs_spread() -> None:
    cal = SizeCalibration(intercept=-0.8, slope=1.1)
    assert SizeCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="distinct"):
        fit_lad([5.0, 5.0, 5.0], [4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match="three"):
        fit_lad([5.0, 6.0], [5.0, 6.0])


def test_manifest_refuses_a_bad_size_calibration_at_load() -> None:
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from services.analysis.manifest import ModelManifest

    shipped = Path(__file__).resolve().parents[3] / "models" / "nodule-seg" / "model.json"
    data = json.loads(shipped.read_text())
    good = {"type": "linear", "intercept": -0.5, "slope": 1.1}
    assert ModelManifest.model_validate({**data, "size_calibration": good}).size_calibration
    with pytest.raises(ValidationError):
        ModelManifest.model_validate({**data, "size_calibration": {**good, "slope": 9.0}})
