"""Pixel data of one CT slice → Hounsfield units, with allocation guards (PS3.5 8, PS3.3 C.7.6.3).

Native (uncompressed) data is read with ``np.frombuffer`` on PixelData (no copy until the
float conversion); encapsulated data is decoded by pydicom's plugins (pylibjpeg: JPEG
lossless/extended, JPEG-LS, JPEG 2000, HTJ2K; RLE) after the compressed code stream's own
image size has been checked against Rows/Columns, so a forged header cannot make a decoder
allocate gigabytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames

from services.analysis.dicom_io import BIG_ENDIAN_SYNTAX, NATIVE_SYNTAXES, SliceHeader
from services.analysis.errors import AnalysisError

MAX_ROWS_COLUMNS = 2048
AIR_HU = -1024.0
# A file may carry other large elements (private headers, icons): allow this much beyond pixels.
FILE_SLACK_BYTES = 4 * 1024 * 1024

_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "u2", (16, 1): "i2", (32, 0): "u4", (32, 1): "i4"}


def check_image_size(header: SliceHeader) -> None:
    """Reject absurd image sizes from the header alone, before any pixel is read."""
    if not (0 < header.rows <= MAX_ROWS_COLUMNS and 0 < header.columns <= MAX_ROWS_COLUMNS):
        raise AnalysisError(
            "image-too-large",
            f"image of {header.rows}x{header.columns} pixels; CT slices larger than "
            f"{MAX_ROWS_COLUMNS}x{MAX_ROWS_COLUMNS} (or empty) are refused",
        )
    if header.number_of_frames != 1:
        raise AnalysisError(
            "image-too-large", f"{header.number_of_frames} frames in one CT Image instance"
        )
    if (header.bits_allocated, header.pixel_representation) not in _DTYPES or not (
        0 < header.bits_stored <= header.bits_allocated
    ):
        raise AnalysisError(
            "corrupt-pixel-data",
            f"unsupported pixel format: BitsAllocated {header.bits_allocated}, "
            f"BitsStored {header.bits_stored}",
        )
    if header.samples_per_pixel != 1:
        raise AnalysisError(
            "corrupt-pixel-data", f"{header.samples_per_pixel} samples per pixel in a CT image"
        )


def expected_bytes(header: SliceHeader) -> int:
    return header.rows * header.columns * header.number_of_frames * header.bits_allocated // 8


def read_dataset(header: SliceHeader) -> Dataset:
    """Read the whole file once its size is known to be plausible for its image size."""
    check_image_size(header)
    path = Path(header.path)
    size = path.stat().st_size
    if size > 2 * expected_bytes(header) + FILE_SLACK_BYTES:
        raise AnalysisError(
            "image-too-large",
            f"file of {size} bytes for a {header.rows}x{header.columns} image; refused",
        )
    try:
        return pydicom.dcmread(path)
    except Exception as exc:
        raise AnalysisError(
            "corrupt-pixel-data",
            f"instance {header.sop_instance_uid} cannot be read ({type(exc).__name__})",
        ) from exc


def _codestream_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) declared by a JPEG / JPEG-LS / JPEG 2000 code stream, if found."""
    head = fragment[:4096]
    siz = head.find(b"\xff\x4f\xff\x51")  # J2K: SOC then SIZ (ITU-T T.800 A.5.1)
    if siz >= 0 and len(head) >= siz + 22:
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[siz + 8 : siz + 24])
        return ysiz - yo, xsiz - xo
    pos = 2 if head[:2] == b"\xff\xd8" else -1  # JPEG / JPEG-LS: SOI, then markers
    while 0 <= pos < len(head) - 9:
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xF7):
            rows, cols = struct.unpack(">HH", head[pos + 5 : pos + 9])  # SOFn / SOF55
            return rows, cols
        pos += 2 + length
    return None


def _check_codestream(ds: Dataset, header: SliceHeader) -> None:
    try:
        first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]
    except Exception as exc:
        raise AnalysisError(
            "corrupt-pixel-data",
            f"instance {header.sop_instance_uid}: encapsulated pixel data is malformed",
        ) from exc
    size = _codestream_size(bytes(first))
    if size is not None and (size[0] > header.rows or size[1] > header.columns):
        raise AnalysisError(
            "image-too-large",
            f"instance {header.sop_instance_uid}: compressed image declares {size[0]}x{size[1]}"
            f" pixels but the header says {header.rows}x{header.columns}",
        )


def _native(ds: Dataset, header: SliceHeader) -> NDArray[np.integer]:
    data = ds.get("PixelData")
    need = expected_bytes(header)
    if data is None or len(data) < need:
        have = 0 if data is None else len(data)
        raise AnalysisError(
            "corrupt-pixel-data",
            f"instance {header.sop_instance_uid}: pixel data has {have} bytes, "
            f"{header.rows}x{header.columns}x{header.bits_allocated} bits need {need}",
        )
    dtype = np.dtype(_DTYPES[(header.bits_allocated, header.pixel_representation)])
    if header.transfer_syntax_uid == BIG_ENDIAN_SYNTAX:
        dtype = dtype.newbyteorder(">")
    raw = np.frombuffer(data, dtype=dtype, count=header.rows * header.columns)
    raw = raw.reshape(header.rows, header.columns)
    if header.bits_stored < header.bits_allocated:
        bits = header.bits_stored
        values = raw.astype(np.int64) & ((1 << bits) - 1)
        if header.pixel_representation == 1:
            values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
        return values
    return raw


def _encapsulated(ds: Dataset, header: SliceHeader) -> NDArray[np.integer]:
    _check_codestream(ds, header)
    try:
        array = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if "plugin" in str(exc).lower() or isinstance(exc, NotImplementedError):
            raise AnalysisError(
                "unsupported-transfer-syntax",
                f"no decoder for transfer syntax {header.transfer_syntax_uid}",
            ) from exc
        raise AnalysisError(
            "corrupt-pixel-data", f"instance {header.sop_instance_uid} cannot be decoded"
        ) from exc
    except Exception as exc:
        raise AnalysisError(
            "corrupt-pixel-data", f"instance {header.sop_instance_uid} cannot be decoded"
        ) from exc
    if array.shape != (header.rows, header.columns):
        raise AnalysisError(
            "corrupt-pixel-data",
            f"instance {header.sop_instance_uid}: decoded {array.shape}, expected "
            f"{header.rows}x{header.columns}",
        )
    return array


def stored_values(ds: Dataset, header: SliceHeader) -> NDArray[np.integer]:
    """Stored pixel values (BitsStored applied, signed where PixelRepresentation is 1)."""
    if header.transfer_syntax_uid in NATIVE_SYNTAXES:
        return _native(ds, header)
    return _encapsulated(ds, header)


def to_hu(raw: NDArray[np.integer], header: SliceHeader, out: NDArray[np.float32]) -> None:
    """Write HU into ``out``: rescale, padding → air, and nothing below air (-1024 HU).

    Scanners mark pixels outside the reconstruction circle with PixelPaddingValue or with
    values like -2000 or -3024 HU; all of them become air so that lung masking and the model
    see one consistent background. Padding values that rescale to air or below need no
    comparison of their own: the floor at -1024 HU already takes care of them.
    """
    np.copyto(out, raw, casting="unsafe")
    if header.slope != 1.0:
        np.multiply(out, np.float32(header.slope), out=out)
    if header.intercept != 0.0:
        np.add(out, np.float32(header.intercept), out=out)
    if header.padding is not None:
        low, high = header.padding
        if max(low * header.slope, high * header.slope) + header.intercept > AIR_HU:
            out[(raw >= low) & (raw <= high)] = AIR_HU
    np.maximum(out, np.float32(AIR_HU), out=out)


def load_hu(header: SliceHeader, out: NDArray[np.float32]) -> None:
    """Read one slice file and write its HU values into ``out`` (shape rows × columns)."""
    ds = read_dataset(header)
    to_hu(stored_values(ds, header), header, out)
