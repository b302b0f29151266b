from __future__ import annotations

import numpy as np

from services.modeling.training import dataset

LUNG_X, TISSUE_X = -0.8, 0.5  # normalised lung parenchyma and soft tissue


def _case() -> dataset.CachedCase:
    """Three solid 6 mm nodules in lung: isolated, on a 5 mm vessel, against the chest wall."""
    shape = (30, 30, 90)
    grid = np.indices(shape, dtype=np.float64)
    x = np.full(shape, LUNG_X)
    y = np.zeros(shape, dtype=np.uint8)
    centers = np.array([[15.0, 15.0, 15.0], [15.0, 15.0, 45.0], [15.0, 15.0, 75.0]])
    vessel = np.hypot(grid[0] - 15, grid[1] - 15) <= 2.5
    x[vessel & (grid[2] > 30) & (grid[2] < 60)] = TISSUE_X
    x[(grid[0] >= 18) & (grid[2] >= 60)] = TISSUE_X  # the wall: a half-space by nodule 3
    for center in centers:
        inside = np.sqrt(sum((grid[a] - center[a]) ** 2 for a in range(3))) <= 3.0
        x[inside], y[inside] = TISSUE_X, 255
    return dataset.CachedCase(
        seed=1,
        x=x.astype(np.float16),
        y=y,
        centers=centers,
        radii=np.full(3, 3.0),
        lung=np.argwhere(x < -0.5)[:100].astype(np.int32),
    )


def test_nodule_traits_tell_isolated_vessel_attached_and_juxtapleural_apart():
    subsolid, pleural, vascular = dataset.nodule_traits(_case())
    assert not subsolid.any()
    assert pleural.tolist() == [False, False, True]
    assert vascular.tolist() == [False, True, False]


def test_emphasis_weights_multiply_per_trait():
    case = _case()
    plain = dataset.PatchSampler([case], 16)
    assert plain.weights[0].tolist() == [1.0, 1.0, 1.0]
    emphasised = dataset.PatchSampler(
        [case], 16, emphasis=dataset.Emphasis(pleural=3.0, vascular=2.0, small=5.0)
    )
    # all three are 6 mm (not under SMALL_MM), so only location counts
    assert emphasised.weights[0].tolist() == [1.0, 2.0, 3.0]
