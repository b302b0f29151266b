from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from services.modeling.evaluation import evalcases
from services.modeling.evaluation.evaluate import score_case
from services.modeling.evaluation.report import markdown, summarize
from tests.unit.modeling.fakecase import fake_case


@dataclass
class Finding:
    center_mm: tuple[float, float, float]
    confidence: float
    mask: np.ndarray
    bbox: tuple[int, ...]
    diameter_mm: float
    volume_mm3: float


def _perfect(case: evalcases.EvalCase, index: int, score: float = 0.9) -> Finding:
    mask, origin = case.truth_box(index)
    n = case.nodules[index]
    end = tuple(o + s for o, s in zip(origin, mask.shape))
    return Finding(
        tuple(n["center_mm"]),
        score,
        mask,
        (*origin, *end),
        n["diameter_mm"] + 0.5,
        n["volume_mm3"] * 1.1,
    )


def test_cache_round_trip(tmp_path, monkeypatch):
    case = evalcases.from_phantom(fake_case(4), 4)
    evalcases._save(case, tmp_path / "c.npz")
    back = evalcases._load(tmp_path / "c.npz")
    assert back.nodules == case.nodules and back.thickness_mm == case.thickness_mm
    np.testing.assert_array_equal(back.volume.hu, np.rint(case.volume.hu))
    assert back.volume.spacing == case.volume.spacing
    for a, b in zip(back.masks, case.masks):
        np.testing.assert_array_equal(a, b)


def test_score_case_and_summary():
    cases = [evalcases.from_phantom(fake_case(s), s) for s in (1, 2, 3)]
    results = []
    for n, case in enumerate(cases):
        findings = [_perfect(case, 0)]
        far = Finding(
            (500.0, 500.0, 500.0),
            0.95 if n == 0 else 0.2,
            np.ones((1, 1, 1), bool),
            (0, 0, 0, 1, 1, 1),
            3.0,
            10.0,
        )
        findings.append(far)
        results.append(score_case(case, findings))
    first = results[0].nodules[0]
    assert first.dice == 1.0
    assert first.diameter_error_mm == pytest.approx(0.5)
    assert first.volume_error_rel == pytest.approx(0.1)
    summary = summarize(results)
    overall = summary["overall"]
    total = sum(len(c.nodules) for c in cases)
    assert overall["detected_any_score"] == 3 and overall["nodules"] == total
    assert overall["false_positives_per_scan"] == 1.0
    assert overall["froc"]["1.0"] == pytest.approx(3 / total)
    assert overall["diameter_mae_mm"] == pytest.approx(0.5)
    assert {row["value"] for row in summary["strata"]["size"]} <= {"6-8 mm", "8-15 mm"}
    table = markdown(summary)
    assert "| cpm |" in table and "**By size**" in table


def test_summary_leaves_out_nodules_under_3mm():
    case = evalcases.from_phantom(fake_case(1), 1)
    tiny = {**case.nodules[0], "diameter_mm": 2.5, "center_mm": [900.0, 900.0, 900.0]}
    case.nodules.append(tiny)
    case.masks.append(case.masks[0])
    outcome = score_case(case, [_perfect(case, 0)])
    summary = summarize([outcome])
    overall = summary["overall"]
    assert overall["nodules_under_3mm_not_scored"] == 1
    assert overall["nodules"] == len(case.nodules) - 1
    assert overall["froc"]["1.0"] == pytest.approx(1 / (len(case.nodules) - 1))
    rows = {row["value"]: row for row in summary["strata"]["size"]}
    unscored = rows["under 3 mm (not scored)"]
    assert unscored["nodules"] == 1 and unscored["detected_any_score"] == 0
    assert unscored["sensitivity_at_1fp"] is None
    assert "under 3 mm (not scored)" not in {row["value"] for row in summary["strata"]["kind"]}
    assert summary["strata"]["size"][0]["value"] == "under 3 mm (not scored)"


def test_strata_rows_come_in_a_fixed_order():
    case = evalcases.from_phantom(fake_case(1), 1)
    kinds = ("solid", "ground-glass", "part-solid")
    for n, kind in enumerate(kinds):
        extra = {**case.nodules[0], "kind": kind, "center_mm": [900.0 + 50 * n, 900.0, 900.0]}
        case.nodules.append(extra)
        case.masks.append(case.masks[0])
    summary = summarize([score_case(case, [])])
    assert [row["value"] for row in summary["strata"]["kind"]] == sorted(kinds)
