"""The shipped model (models/nodule-seg) through the real analysis pipeline.

Three small held-out phantoms (seeds never used in training, validation or the model card
evaluation), analysed in memory by ``analyze_volume``; the bounds are loose enough for the
shipped model to pass on two CPU cores and tight enough that a broken model, engine or
preprocessing fails them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.analysis.engine import Engine, sha256_of
from services.analysis.pipeline import analyze_volume
from services.modeling.evaluation import froc
from services.modeling.evaluation.evalcases import eval_case
from services.modeling.evaluation.evaluate import score_case

pytestmark = pytest.mark.slow

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "nodule-seg"
#: (seed, slices, thickness mm): small slabs, each with at least one nodule of 6 mm or more
#: (solid 4.4 + part-solid 11.3 mm; solid 9.0 + 2.8 mm; solid 10.3 mm)
CASES = ((300000, 60, 1.25), (300003, 60, 1.25), (300002, 80, 1.0))


def test_manifest_sha256_matches_shipped_files():
    manifest = json.loads((MODEL_DIR / "model.json").read_text())
    assert manifest["name"] == "noduleflow-nodule-seg"
    assert {"fp32", "fp16"} <= set(manifest["files"])
    for entry in manifest["files"].values():
        path = MODEL_DIR / entry["path"]
        assert path.stat().st_size == entry["bytes"] < 8 * 1024 * 1024
        assert sha256_of(path) == entry["sha256"]


@pytest.fixture(scope="module")
def outcomes():
    engine = Engine.load(MODEL_DIR, "cpu")
    results = []
    for seed, slices, thickness in CASES:
        case = eval_case(seed, cache_dir=None, slices=slices, thickness=thickness)
        findings = analyze_volume(case.volume, engine)
        results.append(score_case(case, findings))
    return results


def test_detects_every_nodule_of_6_mm_or_more(outcomes):
    big = [n for o in outcomes for n in o.nodules if n.attrs["diameter_mm"] >= 6.0]
    assert big, "test cases must hold nodules of 6 mm or more"
    missed = [(n.attrs["diameter_mm"], n.attrs["kind"]) for n in big if n.hit_score is None]
    assert not missed
    assert all(n.hit_score >= 0.5 for n in big)


def test_segmentation_and_size_of_solid_nodules(outcomes):
    solid = [
        n
        for o in outcomes
        for n in o.nodules
        if n.attrs["kind"] == "solid" and n.attrs["diameter_mm"] >= 4.0
    ]
    assert len(solid) >= 3 and all(n.hit_score is not None for n in solid)
    assert np.mean([n.dice for n in solid]) >= 0.75
    errors = [abs(n.diameter_error_mm) for n in solid]
    assert np.mean(errors) <= 1.0 and max(errors) <= 1.5


def test_few_false_positives(outcomes):
    scans = [o.scan for o in outcomes]
    false_positives = sum(h < 0 for s in scans for h in froc.match(s))
    assert false_positives / len(scans) <= 2.0
