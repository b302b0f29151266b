"""analyze_files on a small phantom study as the phantom writes it (real DICOM variations)."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.analysis.command import folder_files
from services.analysis.config import AnalysisConfig
from services.analysis.dicom_io import read_headers
from services.analysis.lungs import CROP_MARGIN_MM, lung_mask
from services.analysis.pipeline import analyze_files
from services.analysis.series import choose_series
from services.analysis.volume import assemble


class TruthModel:
    """Returns the phantom's own label map for the crop the pipeline asks about."""

    name, version, provider = "truth", "0", "TruthProvider"
    config = AnalysisConfig(threshold=0.5)

    def __init__(self, labels: np.ndarray, box: tuple[slice, ...]) -> None:
        self.labels, self.box = labels, box

    def lane(self) -> AbstractContextManager[int | None]:
        return nullcontext()

    def probability(self, hu: Any, spacing: Any, *, progress: Any = None) -> np.ndarray:
        assert hu.shape == self.labels[self.box].shape
        return np.where(self.labels[self.box] > 0, 0.95, 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], np.ndarray]:
    from services.modeling.phantom import write_phantom

    outdir = tmp_path_factory.mktemp("phantom")
    write_phantom(outdir, seed=5, nodules=3, slices=64, matrix=256, thickness=2.5)
    truth = json.loads((outdir / "truth.json").read_text())
    labels = np.load(outdir / "mask.npz")["labels"]
    return outdir, truth, labels


def test_phantom_study_end_to_end(phantom) -> None:
    outdir, truth, labels = phantom
    files = folder_files(outdir)  # DICOM plus truth.json and mask.npz, which are skipped
    plan = choose_series(read_headers(files)[0])
    volume = assemble(plan)
    assert volume.shape == tuple(truth["shape"]) == labels.shape
    assert volume.spacing == pytest.approx(tuple(truth["spacing"]))
    assert volume.origin == pytest.approx(tuple(truth["geometry"]["origin"]), abs=1e-3)
    assert volume.hu.min() == -1024  # padding (-3024 here) became air
    box = lung_mask(volume.hu, volume.spacing).crop(CROP_MARGIN_MM, volume.spacing)
    result = analyze_files(files, TruthModel(labels, box))
    assert result.ignored_files == 2
    assert len(truth["nodules"]) >= 2
    for nodule in truth["nodules"]:
        distances = [
            np.linalg.norm(np.subtract(f.center_mm, nodule["center_mm"])) for f in result.findings
        ]
        best = result.findings[int(np.argmin(distances))]
        assert min(distances) < 1.0, nodule
        # Pixels are 1.43 mm here; the truth adds a whole pixel to each axis, we add half.
        assert abs(best.diameter_mm - nodule["diameter_mm"]) <= 1.5, (best, nodule)
        assert abs(best.volume_mm3 - nodule["volume_mm3"]) <= 0.01 * nodule["volume_mm3"] + 1
    assert len(result.findings) == len(truth["nodules"])
