"""Volume assembly: ordering along the normal, rescale, signedness, padding, guards."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.analysis.dicom_io import read_headers
from services.analysis.errors import AnalysisError
from services.analysis.series import choose_series
from services.analysis.volume import assemble
from tests.unit.analysis.chest import write_volume

SPACING = (1.25, 1.5, 1.5)


def _truth(n: int = 52, rows: int = 24, cols: int = 20) -> np.ndarray:
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 1500, size=(n, rows, cols)).astype(np.float32)
    hu[:, 0, 0] = np.arange(n) * 10  # a per-slice fingerprint
    return hu


def _assemble(paths: list[Path]):
    headers, _ = read_headers(paths)
    return assemble(choose_series(headers))


def test_head_first_shuffled_names_and_instance_numbers(tmp_path: Path) -> None:
    truth = _truth()
    paths, uids = write_volume(truth, tmp_path, spacing=SPACING)
    volume = _assemble(paths)
    # Normal (0, 0, 1): ascending position = ascending z = descending k of the truth.
    np.testing.assert_array_equal(volume.hu, truth[::-1])
    assert volume.sop_uids == tuple(reversed(uids))
    assert volume.spacing == pytest.approx(SPACING)
    assert volume.slice_dir == pytest.approx((0, 0, 1))
    first = pydicom.dcmread(paths[-1])  # the most inferior slice is k = 0
    np.testing.assert_allclose(volume.origin, [float(v) for v in first.ImagePositionPatient])
    # Voxel (k, j, i) maps to that slice's IPP + j·row spacing·col_dir + i·col spacing·row_dir.
    lps = volume.index_to_lps(np.array([3.0, 5.0, 7.0]))
    ipp = np.array([float(v) for v in pydicom.dcmread(paths[-4]).ImagePositionPatient])
    np.testing.assert_allclose(lps, ipp + np.array([7 * 1.5, 5 * 1.5, 0]), atol=1e-6)


def test_feet_first(tmp_path: Path) -> None:
    truth = _truth()
    paths, uids = write_volume(truth, tmp_path, spacing=SPACING, feet_first=True)
    volume = _assemble(paths)
    np.testing.assert_array_equal(volume.hu, truth)
    assert volume.sop_uids == tuple(uids)
    assert volume.slice_dir == pytest.approx((0, 0, -1))
    assert volume.row_dir == pytest.approx((-1, 0, 0))


def test_unsigned_with_rescale(tmp_path: Path) -> None:
    truth = _truth()
    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, feet_first=True, unsigned=True)
    np.testing.assert_array_equal(_assemble(paths).hu, np.maximum(truth, -1024))


def test_slope_and_intercept_per_slice(tmp_path: Path) -> None:
    truth = _truth()

    def edit(ds: pydicom.Dataset, k: int) -> None:
        slope = 0.5 if k % 2 else 1.0
        raw = np.round((truth[k] - 100) / slope).astype(np.int16)
        ds.RescaleSlope, ds.RescaleIntercept = slope, 100
        ds.PixelData = raw.tobytes()

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, feet_first=True, edit=edit)
    np.testing.assert_allclose(_assemble(paths).hu, truth, atol=0.5)


def test_padding_and_below_air_become_air(tmp_path: Path) -> None:
    truth = _truth()
    truth[:, -3:, -3:] = -2000  # padding value
    truth[:, :2, -2:] = -3024  # "outside the circle" convention

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.PixelPaddingValue = -2000

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, feet_first=True, edit=edit)
    hu = _assemble(paths).hu
    assert hu[:, -3:, -3:].max() == -1024 and hu[:, :2, -2:].max() == -1024
    inside = truth > -1024
    np.testing.assert_array_equal(hu[inside], truth[inside])


def test_bits_stored_masks_high_bits_and_sign_extends(tmp_path: Path) -> None:
    truth = np.clip(_truth(), -2048, 2047)

    def edit(ds: pydicom.Dataset, k: int) -> None:
        raw = np.round(truth[k]).astype(np.int16).view(np.uint16) & 0x0FFF
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = (raw | 0xA000).astype(np.uint16).tobytes()  # garbage above bit 11

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, feet_first=True, edit=edit)
    np.testing.assert_array_equal(_assemble(paths).hu, np.maximum(truth, -1024))


def test_truncated_pixel_data_is_corrupt(tmp_path: Path) -> None:
    truth = _truth()

    def edit(ds: pydicom.Dataset, k: int) -> None:
        if k == 10:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, edit=edit)
    with pytest.raises(AnalysisError) as info:
        _assemble(paths)
    assert info.value.code == "corrupt-pixel-data" and info.value.skip is False


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    paths, _ = write_volume(_truth(), tmp_path, spacing=SPACING)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 300])
    with pytest.raises(AnalysisError) as info:
        _assemble(paths)
    assert info.value.code == "corrupt-pixel-data"


def test_allocation_bomb_refused_before_allocation(tmp_path: Path) -> None:
    truth = _truth()

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.Rows = ds.Columns = 65535  # with the original tiny PixelData

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, edit=edit)
    tracemalloc.start()
    try:
        headers, _ = read_headers(paths)
        with pytest.raises(AnalysisError) as info:
            choose_series(headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "image-too-large"
    assert peak < 20 * 1024 * 1024  # one 65535² int16 slice alone would be 8 GiB


def test_oversized_file_refused_before_reading(tmp_path: Path) -> None:
    truth = _truth()

    def edit(ds: pydicom.Dataset, k: int) -> None:
        if k == 3:
            ds.PixelData = bytes(8 * 1024 * 1024)  # far more than 24x20 pixels need

    paths, _ = write_volume(truth, tmp_path, spacing=SPACING, edit=edit)
    headers, _ = read_headers(paths)
    with pytest.raises(AnalysisError) as info:
        assemble(choose_series(headers))
    assert info.value.code == "image-too-large"


def test_rows_larger_than_the_pixel_data_is_corrupt(tmp_path: Path) -> None:
    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.Rows = 1024  # the original 24-row data stays

    paths, _ = write_volume(_truth(), tmp_path, spacing=SPACING, edit=edit)
    with pytest.raises(AnalysisError) as info:
        _assemble(paths)
    assert info.value.code == "corrupt-pixel-data" and "need" in info.value.message
