"""analyze_files / analyze_volume end to end on a synthetic chest, and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.analysis import command
from services.analysis.config import AnalysisConfig
from services.analysis.errors import AnalysisError
from services.analysis.pipeline import analyze_files, analyze_volume
from services.analysis.rescore import Rescorer
from services.core.settings import Settings
from tests.factories.dicom import write_ct_series
from tests.unit.analysis.chest import GGN_HU, FakeModel, Nodule, chest, volume_of, write_volume

SPACING = (1.25, 1.5, 1.5)
NODULES = (
    Nodule((20.0, 50.0, 40.0), (6.0, 6.0, 6.0)),  # 12 mm solid, left of the image
    Nodule((40.0, 60.0, 88.0), (5.0, 5.0, 5.0), hu=GGN_HU),  # 10 mm ground glass
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str], np.ndarray]:
    hu = chest(spacing=SPACING, nodules=NODULES)
    outdir = tmp_path_factory.mktemp("study")
    paths, uids = write_volume(hu, outdir, spacing=SPACING)
    return paths, uids, hu


def test_analyze_files_finds_and_locates_nodules(study) -> None:
    paths, uids, hu = study
    model = FakeModel()
    stages: list[str] = []
    result = analyze_files(paths, model, progress=lambda stage, f: stages.append(stage))
    assert [f.kind for f in result.findings] == ["solid", "ground-glass"]
    # Within a pixel (1.5 mm here) of the drawn diameters.
    solid, ggn = result.findings
    assert abs(solid.diameter_mm - 12.0) <= 1.0 and solid.lung_rads == "4A"
    assert abs(ggn.diameter_mm - 10.0) <= 1.0 and ggn.lung_rads == "2"
    # Head first: the truth slice k lies at z = -k * 1.25; columns run along +x.
    rows, cols = hu.shape[1:]
    expected = (-cols * 1.5 / 2 + 40 * 1.5, -rows * 1.5 / 2 + 50 * 1.5, -20 * 1.25)
    assert solid.center_mm == pytest.approx(expected, abs=0.1)
    assert result.sop_uids == tuple(reversed(uids))
    k0, _, _, k1, _, _ = solid.bbox
    assert solid.source_sop_uids == result.sop_uids[k0:k1]
    assert uids[20] in solid.source_sop_uids
    assert set(result.timings) == {"read", "assemble", "crop", "inference", "postprocess"}
    assert result.model == {"name": "fake", "version": "0"} and result.provider == "FakeProvider"
    assert "64 slices" in result.series_reason
    ((shape, spacing),) = model.calls
    assert spacing == pytest.approx(SPACING) and shape[1] < hu.shape[1]  # cropped
    assert {"read", "inference", "postprocess"} <= set(stages)


def test_analyze_volume_matches(study) -> None:
    _, _, hu = study
    timings: dict[str, float] = {}
    found = analyze_volume(volume_of(hu, SPACING), FakeModel(), timings=timings)
    assert [f.kind for f in found] == ["solid", "ground-glass"]
    assert set(timings) == {"crop", "inference", "postprocess"}


def test_not_dicom_and_too_few(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a DICOM file")
    with pytest.raises(AnalysisError) as info:
        analyze_files([junk], FakeModel())
    assert info.value.code == "not-dicom" and info.value.skip
    _, _, paths = write_ct_series(tmp_path / "short", 3)
    with pytest.raises(AnalysisError) as info:
        analyze_files([*paths, junk], FakeModel())
    assert info.value.code == "too-few-slices"


def test_command_json_and_errors(study, tmp_path: Path, monkeypatch, capsys) -> None:
    paths, _, _ = study
    monkeypatch.setattr(command, "load_engine", lambda settings: FakeModel())
    settings = Settings(model_dir=tmp_path / "none")
    code = command.analyze_folder(paths[0].parent, settings=settings, as_json=True)
    out = capsys.readouterr().out
    assert code == 0
    document = json.loads(out)
    assert list(document) == ["findings"] and len(document["findings"]) == 2
    assert document["findings"][0]["kind"] == "solid"
    code = command.analyze_folder(paths[0].parent, settings=settings, as_json=False)
    out = capsys.readouterr().out
    assert code == 0 and "4A" in out and "Lung-RADS" in out
    _, _, short = write_ct_series(tmp_path / "short", 3)
    code = command.analyze_folder(short[0].parent, settings=settings, as_json=True)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "too-few-slices" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_command_reports_a_missing_model(study, tmp_path: Path, capsys) -> None:
    paths, _, _ = study
    settings = Settings(model_dir=tmp_path / "no-model")
    code = command.analyze_folder(paths[0].parent, settings=settings, as_json=True)
    assert code == 1 and "model" in capsys.readouterr().err


def test_only_the_chosen_series_is_read(tmp_path: Path, monkeypatch) -> None:
    from services.analysis import volume as volume_module

    hu = chest(spacing=SPACING, nodules=NODULES)
    study = "1.2.826.0.1.3680043.10.99"
    thin, _ = write_volume(hu, tmp_path / "thin", spacing=SPACING, study_uid=study)
    thick_hu = hu[::2]
    thick, _ = write_volume(thick_hu, tmp_path / "thick", spacing=(2.5, 1.5, 1.5), study_uid=study)
    reads: list[str] = []
    original = volume_module.read_dataset

    def counting(header):  # type: ignore[no-untyped-def]
        reads.append(header.series_instance_uid)
        return original(header)

    monkeypatch.setattr(volume_module, "read_dataset", counting)
    result = analyze_files([*thick, *thin], FakeModel())
    assert len(reads) == len(thin) and set(reads) == {result.series_uid}
    assert "best of 2 usable series" in result.series_reason
    assert result.geometry.spacing[0] == pytest.approx(1.25)


def test_candidates_below_the_operating_point_are_not_reported(study) -> None:
    _, _, hu = study
    model = FakeModel()

    # scores by attenuation: the solid nodule high, the ground-glass one near 0
    rescorer = Rescorer(
        features=("mean_hu",),
        mean=(-0.6,),  # solid (0 HU) → σ(6), ground glass (-600 HU) → σ(-6)
        scale=(0.1,),
        weights=(1.0,),
        bias=0.0,
    )
    model.config = AnalysisConfig(threshold=0.5, rescorer=rescorer, report_min_confidence=0.5)
    volume = volume_of(hu, SPACING)
    reported = analyze_volume(volume, model)
    assert [f.kind for f in reported] == ["solid"]
    assert reported[0].confidence > 0.99
    everything = analyze_volume(volume, model, all_candidates=True)
    assert [f.kind for f in everything] == ["solid", "ground-glass"]
    assert everything[1].confidence < 0.01
