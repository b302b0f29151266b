"""Lung-RADS v2022 baseline table."""

from __future__ import annotations

import pytest

from services.analysis.lungrads import category, overall


@pytest.mark.parametrize(
    ("kind", "diameter", "solid", "expected"),
    [
        ("solid", 3.0, None, "2"),
        ("solid", 5.9, None, "2"),
        ("solid", 5.95, None, "3"),  # rounds to 6.0 (one decimal, v2022)
        ("solid", 6.0, None, "3"),
        ("solid", 7.9, None, "3"),
        ("solid", 8.0, None, "4A"),
        ("solid", 14.9, None, "4A"),
        ("solid", 15.0, None, "4B"),
        ("solid", 40.0, None, "4B"),
        ("part-solid", 5.9, 4.0, "2"),
        ("part-solid", 6.0, 0.0, "3"),
        ("part-solid", 12.0, 5.9, "3"),
        ("part-solid", 12.0, 6.0, "4A"),
        ("part-solid", 12.0, 7.9, "4A"),
        ("part-solid", 12.0, 8.0, "4B"),
        ("part-solid", 20.0, None, "3"),
        ("ground-glass", 10.0, None, "2"),
        ("ground-glass", 29.9, None, "2"),
        ("ground-glass", 30.0, None, "3"),
    ],
)
def test_baseline_table(kind: str, diameter: float, solid: float | None, expected: str) -> None:
    assert category(kind, diameter, solid) == expected


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError):
        category("calcified", 5.0)


def test_overall_is_the_highest() -> None:
    assert overall([]) == "1"
    assert overall(["2", "4A", "3"]) == "4A"
    assert overall(["4A", "4B", "2"]) == "4B"
