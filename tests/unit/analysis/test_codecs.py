"""Compressed transfer syntaxes decode to exactly the uncompressed HU values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from services.analysis.dicom_io import read_header
from services.analysis.errors import AnalysisError
from services.analysis.pixels import load_hu
from tests.factories.dicom import ct_slice
from tests.services import require_tool


def _original(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(11)
    pixels = rng.integers(-1024, 2500, size=(64, 64)).astype(np.int16)
    pixels[10:30, 10:30] = -1000
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0, pixels=pixels)
    path = tmp_path / "native.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, np.maximum(pixels.astype(np.float32), -1024)


def _hu(path: Path) -> np.ndarray:
    header = read_header(path)
    assert header is not None
    out = np.empty((header.rows, header.columns), dtype=np.float32)
    load_hu(header, out)
    return out


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_pydicom_encoded_syntaxes_roundtrip(tmp_path: Path, syntax: str) -> None:
    native, expected = _original(tmp_path)
    ds = pydicom.dcmread(native)
    ds.compress(syntax)
    path = tmp_path / "compressed.dcm"
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(_hu(path), expected)


@pytest.mark.parametrize(
    ("tool", "args", "syntax"),
    [
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
        ("dcmcjpls", [], "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        ("dcmcrle", [], "1.2.840.10008.1.2.5"),  # RLE
    ],
)
def test_dcmtk_encoded_syntaxes_roundtrip(
    tmp_path: Path, tool: str, args: list[str], syntax: str
) -> None:
    binary = require_tool(tool)
    native, expected = _original(tmp_path)
    path = tmp_path / "dcmtk.dcm"
    subprocess.run([binary, *args, str(native), str(path)], check=True, capture_output=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(_hu(path), expected)


def test_reference_jpeg2000_ct_equals_its_uncompressed_twin() -> None:
    j2k = get_testdata_file("693_J2KR.dcm", download=False)
    raw = get_testdata_file("693_UNCR.dcm", download=False)
    if j2k is None or raw is None:
        pytest.skip("pydicom-data CT files not installed")
    a, b = _hu(Path(str(j2k))), _hu(Path(str(raw)))
    assert a.shape == (512, 512)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1024 and a.max() > 500


def test_codestream_larger_than_header_is_refused(tmp_path: Path) -> None:
    native, _ = _original(tmp_path)
    ds = pydicom.dcmread(native)
    ds.compress(JPEG2000Lossless)
    ds.Rows = ds.Columns = 16  # the code stream still says 64 x 64
    path = tmp_path / "forged.dcm"
    ds.save_as(path)
    with pytest.raises(AnalysisError) as info:
        _hu(path)
    assert info.value.code == "image-too-large"


def test_jpeg_codestream_larger_than_header_is_refused(tmp_path: Path) -> None:
    binary = require_tool("dcmcjpls")
    native, _ = _original(tmp_path)
    path = tmp_path / "ls.dcm"
    subprocess.run([binary, str(native), str(path)], check=True, capture_output=True)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 16
    ds.save_as(path)
    with pytest.raises(AnalysisError) as info:
        _hu(path)
    assert info.value.code == "image-too-large"


@pytest.mark.parametrize(
    "variant", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"]
)
def test_reference_syntax_variants_equal_the_explicit_little_endian_file(variant: str) -> None:
    reference = get_testdata_file("MR_small.dcm", download=False)
    other = get_testdata_file(variant, download=False)
    if reference is None or other is None:
        pytest.skip("pydicom test files missing")
    np.testing.assert_array_equal(_hu(Path(str(other))), _hu(Path(str(reference))))


def test_deflated_explicit_little_endian(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    native, expected = _original(tmp_path)
    ds = pydicom.dcmread(native)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path)
    assert path.stat().st_size < native.stat().st_size
    np.testing.assert_array_equal(_hu(path), expected)
