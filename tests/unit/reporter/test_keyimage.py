"""Key images: SC with the contour on the slice of largest extent, and its PNG.

Accepted dciodvfy warnings: DICOMDIR Study Time/Study ID notes (empty Type 2 values of
the synthetic source), and "Laterality ... only permitted to be empty when actually
unknown": a chest slice shows both lungs, so no single laterality applies.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import config, dcmread

from services.reporter.dicom.artefacts import dataset_bytes
from services.reporter.dicom.keyimage import (
    CONTOUR_RGB,
    LUNG_WINDOW,
    build_key_image,
    png_bytes,
    render,
    window,
)
from services.reporter.dicom.model import Algorithm, OutputUids
from tests.factories.reporting import Sphere, build_inputs, dciodvfy, nodule_series

ALGORITHM = Algorithm("nodule-seg", "2.1.0")
ACCEPTED = ("needed to build DICOMDIR", "Laterality")


def key_image(version: int = 1):
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2)])
    headers, findings = build_inputs(series)
    finding = findings[0]
    k = finding.largest_slice()
    sc, rgb = build_key_image(
        source=series.datasets[k],
        header=headers[k],
        finding=finding,
        algorithm=ALGORITHM,
        uids=OutputUids(series.study_uid, version),
    )
    return series, finding, k, sc, rgb


def test_largest_slice_is_the_sphere_equator() -> None:
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5)])
    finding = series.findings()[0]
    areas = series.masks[0].sum(axis=(1, 2))
    assert areas[finding.largest_slice()] == areas.max()


def test_window_maps_lung_range_to_8_bits() -> None:
    level, width = LUNG_WINDOW
    out = window(np.array([level - width, level, level + width]), level, width)
    assert out.tolist() == [0, 128, 255]


def test_render_draws_contour_around_mask_only() -> None:
    hu = np.full((64, 64), -850.0)
    mask = np.zeros((64, 64), dtype=bool)
    mask[30:36, 30:36] = True
    rgb = render(hu, mask, [])
    factor = rgb.shape[0] // 64
    contour = np.all(rgb == CONTOUR_RGB, axis=2)
    rows, cols = np.nonzero(contour)
    assert contour.sum() > 0
    assert rows.min() >= (30 - 1) * factor - factor and rows.max() <= 37 * factor
    assert cols.min() >= (30 - 1) * factor - factor and cols.max() <= 37 * factor
    inside = np.kron(mask, np.ones((factor, factor), dtype=bool))
    assert not (contour & inside).any()  # drawn outside: the nodule border stays visible


def test_render_burns_text_and_is_deterministic() -> None:
    hu = np.full((64, 64), -850.0)
    mask = np.zeros((64, 64), dtype=bool)
    blank = render(hu, mask, [])
    text = render(hu, mask, ["Nodule 1: 6.0 mm solid"])
    assert (text != blank).any()
    assert np.array_equal(text, render(hu, mask, ["Nodule 1: 6.0 mm solid"]))


def test_sc_round_trip_and_references(tmp_path: Path) -> None:
    series, _finding, k, sc, rgb = key_image()
    data = dataset_bytes(sc)
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        back = dcmread(io.BytesIO(data))
        pixels = back.pixel_array
    finally:
        config.settings.reading_validation_mode = previous
    assert back.BurnedInAnnotation == "YES"
    assert back.PhotometricInterpretation == "RGB"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == series.sop_uids[k]
    assert back.SOPInstanceUID == OutputUids(series.study_uid, 1).key_instance(1)
    assert back.StudyInstanceUID == series.study_uid
    assert "4.9 mm solid" in back.ImageComments
    assert np.array_equal(pixels, rgb)
    path = tmp_path / "key.dcm"
    path.write_bytes(data)
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert [w for w in warnings if not any(a in w for a in ACCEPTED)] == []


def test_png_matches_the_sc_pixels() -> None:
    *_, rgb = key_image()
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))).convert("RGB"))
    assert np.array_equal(decoded, rgb)
    assert min(decoded.shape[:2]) >= 512


def test_key_image_uid_is_deterministic_per_version() -> None:
    series = nodule_series()
    headers, findings = build_inputs(series)
    finding = findings[0]
    k = finding.largest_slice()

    def build(version: int) -> str:
        sc, _ = build_key_image(
            source=series.datasets[k],
            header=headers[k],
            finding=finding,
            algorithm=ALGORITHM,
            uids=OutputUids(series.study_uid, version),
        )
        return str(sc.SOPInstanceUID)

    assert build(1) == build(1) != build(2)


def test_small_nodule_on_a_large_slice_gets_a_magnified_inset() -> None:
    hu = np.full((512, 512), -850.0)
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:107, 200:207] = True
    hu[mask] = 40
    rgb = render(hu, mask, [])
    corner = rgb[340:, 340:]
    contour = np.all(corner == CONTOUR_RGB, axis=2)
    assert contour.sum() > 100  # the zoomed contour is in the corner
    big = render(np.full((64, 64), -850.0), np.pad(np.ones((20, 20), bool), 22), [])
    assert not np.all(big[-4:, -4:] == 255)  # a large nodule: no inset frame


def test_inset_avoids_covering_the_nodule() -> None:
    hu = np.full((512, 512), -850.0)
    mask = np.zeros((512, 512), dtype=bool)
    mask[450:457, 450:457] = True  # lower right: the inset must go elsewhere
    hu[mask] = 40
    rgb = render(hu, mask, [])
    assert not np.all(rgb[450:457, 450:457] == 255)  # not under a frame or inset
    assert np.all(rgb[512 - 6 - 1, 6 - 2] == 255)  # frame in the lower left corner
