"""Lung-RADS v2022 baseline categories from nodule size and kind (pure).

ACR Lung-RADS v2022, baseline screening, by mean diameter (mean of long and short axis,
measured on the same image, rounded to one decimal):

- solid: < 6 mm → 2; 6 to < 8 → 3; 8 to < 15 → 4A; ≥ 15 → 4B
- part-solid: total < 6 mm → 2; total ≥ 6 with solid component < 6 → 3;
  solid component 6 to < 8 → 4A; solid component ≥ 8 → 4B
- ground-glass (non-solid): < 30 mm → 2; ≥ 30 → 3

Not modelled here (they need history, morphology or a reader): growth on follow-up,
benign calcification or fat (category 1), juxtapleural/perifissural features, airway
nodules, 4X upgrades, and the S modifier.
"""

from __future__ import annotations

from collections.abc import Iterable

KINDS = ("solid", "part-solid", "ground-glass")
# Ordered from least to most suspicious; "0" (incomplete) ranks below everything.
ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")


def _mm(value: float) -> float:
    return round(float(value) + 1e-9, 1)


def category(kind: str, diameter_mm: float, solid_diameter_mm: float | None = None) -> str:
    """Baseline category of one nodule.

    ``solid_diameter_mm`` is the mean diameter of the solid component (part-solid only);
    when it is omitted for a part-solid nodule the total size alone is used (category 2 or 3).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown nodule kind {kind!r}")
    d = _mm(diameter_mm)
    if d < 0:
        raise ValueError("diameter must be non-negative")
    if kind == "solid":
        if d < 6:
            return "2"
        if d < 8:
            return "3"
        return "4A" if d < 15 else "4B"
    if kind == "ground-glass":
        return "2" if d < 30 else "3"
    if d < 6:
        return "2"
    solid = _mm(solid_diameter_mm or 0.0)
    if solid < 6:
        return "3"
    return "4A" if solid < 8 else "4B"


def rank(cat: str) -> int:
    """Sort key: higher is more suspicious."""
    return ORDER.index(cat)


def overall(categories: Iterable[str]) -> str:
    """Study category: the highest nodule category, "1" when there is no nodule."""
    cats = list(categories)
    return max(cats, key=rank) if cats else "1"
