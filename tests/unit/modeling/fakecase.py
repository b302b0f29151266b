"""A tiny phantom-like case (PhantomCase's fields) for training/export/evaluation tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.analysis.geometry import Volume


@dataclass(frozen=True)
class FakeTruth:
    label: int
    center_mm: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    kind: str = "solid"
    location: str = "isolated"
    shape: str = "round"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "center_mm": list(self.center_mm),
            "diameter_mm": self.diameter_mm,
            "volume_mm3": self.volume_mm3,
            "kind": self.kind,
            "location": self.location,
            "shape": self.shape,
        }


@dataclass
class FakeCase:
    volume: Volume
    labels: np.ndarray
    lungs: np.ndarray
    nodules: list[FakeTruth]
    meta: dict[str, object] = field(default_factory=dict)


def fake_case(seed: int, shape=(40, 112, 112), spacing=(2.0, 1.5, 1.5)) -> FakeCase:
    """Body, two lungs and one or two spherical nodules of 6–12 mm."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    kk, jj, ii = (g * s for g, s in zip(grid, spacing))
    hu = np.full(shape, -1000.0, np.float32)
    body = ((jj - 80) / 70) ** 2 + ((ii - 84) / 78) ** 2 <= 1
    hu[np.broadcast_to(body, shape)] = 40.0
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= ((kk - 40) / 34) ** 2 + ((jj - 80) / 45) ** 2 + (
            (ii - 84 - side * 38) / 26
        ) ** 2 <= 1
    hu[lungs] = -850.0
    labels = np.zeros(shape, np.uint8)
    truths = []
    for n in range(int(rng.integers(1, 3))):
        side = 1 if n == 0 else -1
        c = np.array([40 + rng.uniform(-8, 8), 80 + rng.uniform(-10, 10), 84 + side * 38])
        d = float(rng.uniform(6, 12))
        ball = (kk - c[0]) ** 2 + (jj - c[1]) ** 2 + (ii - c[2]) ** 2 <= (d / 2) ** 2
        hu[ball] = 20.0
        labels[ball] = n + 1
        vol = float(ball.sum() * np.prod(spacing))
        truths.append(FakeTruth(n + 1, (float(c[2]), float(c[1]), float(c[0])), d, vol))
    hu += rng.normal(0, 15, shape).astype(np.float32)
    volume = Volume(hu=hu, spacing=spacing)
    return FakeCase(volume, labels, lungs, truths, {"thickness": spacing[0]})
