"""Candidate rescoring: features, the logistic model, its manifest form, the pipeline hook."""

from __future__ import annotations

import numpy as np
import pytest

from services.analysis.lungs import LungMask
from services.analysis.postprocess import findings_from_probability
from services.analysis.rescore import FEATURES, Rescorer, fit_logistic, ring_features
from tests.unit.analysis.chest import LUNG_HU, SOLID_HU, ellipsoid, volume_of

SPACING = (1.0, 0.7, 0.7)
SHAPE = (40, 80, 80)


def _rescorer(weights: tuple[float, ...]) -> Rescorer:
    n = len(weights)
    return Rescorer(FEATURES[:n], (0.0,) * n, (1.0,) * n, weights, 0.0)


def test_round_trip_and_direction() -> None:
    r = Rescorer(("confidence", "ring_solid"), (0.5, 0.2), (0.1, 0.3), (2.0, -1.5), 0.25)
    again = Rescorer.from_dict(r.to_dict())
    assert again == r
    low_ring = {"confidence": 0.9, "ring_solid": 0.0}
    high_ring = {"confidence": 0.9, "ring_solid": 0.9}
    assert 0.0 < r(high_ring) < r(low_ring) < 1.0
    assert r({"confidence": 0.99, "ring_solid": 0.0}) > r(low_ring)


@pytest.mark.parametrize(
    "data",
    [
        {"features": ["confidence"], "mean": [0, 1], "scale": [1], "weights": [1], "bias": 0},
        {"features": ["colour"], "mean": [0], "scale": [1], "weights": [1], "bias": 0},
        {"features": ["confidence"], "mean": [0], "scale": [0], "weights": [1], "bias": 0},
        {"features": ["confidence"], "mean": [0], "scale": [1], "weights": [1], "bias": "nan"},
        {"type": "forest", "features": [], "mean": [], "scale": [], "weights": [], "bias": 0},
    ],
)
def test_malformed_rescoring_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Rescorer.from_dict(data)


def test_fit_learns_which_feature_separates() -> None:
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(400):
        label = int(rng.random() < 0.3)
        rows.append(
            {
                **{name: float(rng.normal()) for name in FEATURES},
                "ring_solid": float(rng.normal(-1.0 if label else 1.0, 0.5)),
            }
        )
        labels.append(label)
    r = fit_logistic(rows, labels)
    weights = dict(zip(r.features, r.weights, strict=True))
    assert weights["ring_solid"] < -1.0
    others = [abs(w) for name, w in weights.items() if name != "ring_solid"]
    assert max(others) < abs(weights["ring_solid"]) / 3
    correct = sum((r(row) >= 0.5) == bool(y) for row, y in zip(rows, labels, strict=True))
    assert correct / len(rows) > 0.9
    with pytest.raises(ValueError, match="both"):
        fit_logistic(rows[:5], [0] * 5)


def test_ring_features_tell_a_vessel_from_an_isolated_nodule() -> None:
    hu = np.full(SHAPE, LUNG_HU, dtype=np.float32)
    nodule = ellipsoid(SHAPE, SPACING, (20.0, 40.0, 40.0), (4.0, 4.0, 4.0))
    hu[nodule] = SOLID_HU
    lung = np.ones(SHAPE, dtype=bool)
    solid, outside = ring_features(nodule, hu, lung)
    assert solid == 0.0 and outside == 0.0
    hu[:, 38:43, :] = SOLID_HU  # a vessel running through it
    lung[:, :, :30] = False  # and the mediastinum next to it
    solid, outside = ring_features(nodule, hu, lung)
    assert 0.1 < solid < 0.9
    assert outside == 0.0
    wide = ellipsoid(SHAPE, SPACING, (20.0, 40.0, 32.0), (6.0, 6.0, 6.0))
    assert ring_features(wide, hu, lung)[1] > 0.05


def test_findings_carry_features_and_rescored_confidence() -> None:
    hu = np.full(SHAPE, LUNG_HU, dtype=np.float32)
    hu[ellipsoid(SHAPE, SPACING, (20.0, 40.0, 30.0), (5.0, 5.0, 5.0))] = SOLID_HU
    prob = np.where(hu > -700, 0.9, 0.0).astype(np.float32)
    volume = volume_of(hu, SPACING)
    (plain,) = findings_from_probability(prob, volume)
    assert set(plain.features) == set(FEATURES)
    assert plain.confidence == pytest.approx(0.9)
    assert plain.features["confidence"] == pytest.approx(0.9)
    assert plain.features["elongation"] == pytest.approx(1.0, abs=0.15)
    assert plain.features["ring_solid"] == 0.0
    assert "features" not in plain.to_dict()
    rescorer = _rescorer((1.0, 0.0, 0.0, 0.0, 0.0, -3.0))
    (rescored,) = findings_from_probability(prob, volume, rescore=rescorer)
    assert rescored.confidence == pytest.approx(rescorer(plain.features), abs=1e-4)
    assert rescored.confidence != pytest.approx(0.9)
    assert rescored.features == plain.features


def test_lateral_position_from_the_lung_mask() -> None:
    mask = np.zeros((4, 10, 20), dtype=bool)
    mask[:, 2:8, 2:8] = True
    mask[:, 2:8, 12:18] = True
    lungs = LungMask(mask=mask, stride=(1, 2, 2), shape=(4, 20, 40), volume_ml=1.0)
    assert lungs.lateral(1, 20.0) == pytest.approx(0.0)
    assert lungs.lateral(1, 4.0) == pytest.approx(1.0)
    assert lungs.lateral(1, 10.0) == pytest.approx(0.625)
    empty = LungMask(mask=np.zeros_like(mask), stride=(1, 2, 2), shape=(4, 20, 40), volume_ml=0.0)
    assert empty.lateral(0, 3.0) == 1.0


def test_manifest_refuses_a_bad_rescoring_at_load() -> None:
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from services.analysis.manifest import ModelManifest

    shipped = Path(__file__).resolve().parents[3] / "models" / "nodule-seg" / "model.json"
    data = json.loads(shipped.read_text())
    assert ModelManifest.model_validate(data).rescoring is not None
    for broken in (
        {**data["rescoring"], "weights": [1.0]},
        {**data["rescoring"], "report_min_confidence": 1.5},
    ):
        with pytest.raises(ValidationError):
            ModelManifest.model_validate({**data, "rescoring": broken})
