"""The synthetic chest CT: determinism, truth consistency, DICOM round trip, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.modeling.phantom import PhantomCase, generate_case, write_case

SMALL = {"matrix": 160, "slices": 36}


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return generate_case(11, nodules=3, thickness=1.25, **SMALL)


def test_same_seed_gives_identical_volume_and_truth() -> None:
    a = generate_case(5, nodules=2, **SMALL)
    b = generate_case(5, nodules=2, **SMALL)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.labels, b.labels)
    assert [n.to_dict() for n in a.nodules] == [n.to_dict() for n in b.nodules]
    c = generate_case(6, nodules=2, **SMALL)
    assert not np.array_equal(a.volume.hu, c.volume.hu)


def test_case_shapes_types_and_ranges(case: PhantomCase) -> None:
    hu = case.volume.hu
    assert hu.dtype == np.float32 and hu.shape == (36, 160, 160)
    assert case.labels.dtype == np.uint8 and case.labels.shape == hu.shape
    assert case.lungs.dtype == bool and case.lungs.shape == hu.shape
    assert np.array_equal(hu, np.round(hu)), "values are whole HU, as the files store them"
    padding = float(case.meta["padding_hu"])  # type: ignore[arg-type]
    inside = hu[hu != padding]
    assert inside.min() >= -1024 and inside.max() <= 3071
    assert hu[0, 0, 0] == padding, "corner lies outside the reconstruction circle"
    lung_hu = float(np.median(hu[case.lungs]))
    assert -920 < lung_hu < -700
    assert (hu > 500).sum() > 100, "ribs and spine are present"


def test_truth_matches_label_map(case: PhantomCase) -> None:
    assert len(case.nodules) == 3
    dk, dj, di = case.volume.spacing
    for n in case.nodules:
        where = np.argwhere(case.labels == n.label)
        assert len(where) > 0
        assert n.volume_mm3 == pytest.approx(len(where) * dk * dj * di, abs=0.01)
        centre = case.volume.index_to_lps(where.mean(axis=0))
        assert np.allclose(centre, n.center_mm, atol=0.01)
        assert n.long_axis_mm >= n.short_axis_mm > 0
        assert n.diameter_mm == pytest.approx((n.long_axis_mm + n.short_axis_mm) / 2, abs=0.01)
        assert n.equivalent_diameter_mm == pytest.approx(
            np.cbrt(6 * n.volume_mm3 / np.pi), abs=0.01
        )
        assert case.lungs[tuple(where.T)].mean() > 0.8, "nodules sit in the lungs"
        assert n.kind in ("solid", "part-solid", "ground-glass")
        assert n.location in ("isolated", "juxtapleural", "juxtavascular")
        assert n.shape in ("round", "lobulated", "spiculated")


def test_nodule_density_follows_kind() -> None:
    seen: dict[str, list[float]] = {}
    for seed in range(20, 27):
        c = generate_case(
            seed,
            nodules=3,
            matrix=96,
            slices=40,
            thickness=1.0,
            min_diameter_mm=10.0,
            max_diameter_mm=20.0,
        )
        for n in c.nodules:
            seen.setdefault(n.kind, []).append(n.mean_hu)
    assert set(seen) == {"solid", "part-solid", "ground-glass"}
    assert np.median(seen["solid"]) > -200
    assert np.median(seen["ground-glass"]) < -350
    assert (
        np.median(seen["solid"])
        > np.median(seen["part-solid"])
        > np.median(seen["ground-glass"]) - 50
    )


def test_no_nodule_case_has_empty_labels() -> None:
    c = generate_case(3, nodules=0, **SMALL)
    assert c.nodules == [] and not c.labels.any()


def _read(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize("seed", [1, 2, 4, 7])
def test_dicom_round_trip(tmp_path: Path, seed: int) -> None:
    case = generate_case(seed, nodules=1, **SMALL)
    result = write_case(case, tmp_path, seed=seed)
    assert result.n_slices == 36 and len(result.files) == 36
    assert len(case.volume.sop_uids) == 36
    datasets = _read(result.files)
    by_position = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in by_position]
    ).astype(np.float32)
    assert np.abs(hu - case.volume.hu).max() <= 0.5
    first = by_position[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(case.volume.origin)
    assert [float(v) for v in first.PixelSpacing] == pytest.approx(case.volume.spacing[1:])
    assert list(first.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    assert first.Manufacturer == "noduleflow-phantom"
    assert first.SeriesInstanceUID == result.series_uid
    assert first.StudyInstanceUID == result.study_uid
    for key in (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDate",
        "FrameOfReferenceUID",
        "SliceThickness",
        "SpacingBetweenSlices",
        "KVP",
        "ConvolutionKernel",
        "WindowCenter",
        "WindowWidth",
        "PixelPaddingValue",
    ):
        assert key in first, key
    assert tuple(d.SOPInstanceUID for d in by_position) == case.volume.sop_uids
    assert first[0x0028, 0x0120].value == case.meta["scanner"]["padding_stored"]  # type: ignore[index]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["series_uid"] == result.series_uid and truth["seed"] == seed
    assert truth["nodules"] == [n.to_dict() for n in case.nodules]
    mask = np.load(tmp_path / "mask.npz")
    assert np.array_equal(mask["labels"], case.labels)
    assert tuple(mask["origin"]) == pytest.approx(case.volume.origin)


def test_dicom_variations_across_seeds(tmp_path: Path) -> None:
    representations, directions, shuffled = set(), set(), False
    for seed in range(10):
        c = generate_case(seed, nodules=0, matrix=48, slices=6)
        result = write_case(c, tmp_path / str(seed), seed=seed)
        datasets = _read(result.files)
        representations.add((datasets[0].PixelRepresentation, float(datasets[0].RescaleIntercept)))
        ordered = sorted(datasets, key=lambda d: int(d.InstanceNumber))
        z = [float(d.ImagePositionPatient[2]) for d in ordered]
        steps = np.sign(np.diff(z))
        if np.all(steps > 0):
            directions.add("up")
        elif np.all(steps < 0):
            directions.add("down")
        else:
            shuffled = True
        names = [p.name for p in result.files]
        assert names != sorted(names), "file names do not follow the slice order"
    assert {r[0] for r in representations} == {0, 1}
    assert len({r[1] for r in representations}) >= 2
    assert directions == {"up", "down"} and shuffled


def test_cli_writes_series(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    result = CliRunner().invoke(
        app, ["phantom", str(out), "--seed", "3", "--nodules", "1", "--slices", "12"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.dcm"))) == 12
    truth = json.loads((out / "truth.json").read_text())
    assert len(truth["nodules"]) == 1 and truth["geometry"]["slice_dir"] == [0.0, 0.0, 1.0]
