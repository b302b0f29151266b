"""Reading DICOM headers (without pixel data) into small value objects.

Only what series choice and volume assembly need is kept, so a study of thousands of
instances costs a few megabytes before any pixel is read.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = str(uid.CTImageStorage)
ENHANCED_CT_STORAGE = str(uid.EnhancedCTImageStorage)
LEGACY_ENHANCED_CT_STORAGE = str(uid.LegacyConvertedEnhancedCTImageStorage)
MULTIFRAME_CT_CLASSES = frozenset({ENHANCED_CT_STORAGE, LEGACY_ENHANCED_CT_STORAGE})

# Transfer syntaxes whose PixelData is stored natively (Deflated is inflated by pydicom on read).
NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
)
BIG_ENDIAN_SYNTAX = "1.2.840.10008.1.2.2"


@dataclass(frozen=True)
class SliceHeader:
    """The attributes of one instance that series choice and assembly use (PS3.3 C.7.6)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str
    image_type: tuple[str, ...]
    transfer_syntax_uid: str
    rows: int
    columns: int
    number_of_frames: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    pixel_spacing: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    position: tuple[float, float, float] | None
    acquisition_number: int | None
    slope: float = 1.0
    intercept: float = 0.0
    padding: tuple[int, int] | None = None  # raw stored values (low, high), inclusive
    decodable: bool = True

    @property
    def is_localizer(self) -> bool:
        return len(self.image_type) > 2 and self.image_type[2] in {"LOCALIZER", "SCOUT"}

    @property
    def is_original_primary(self) -> bool:
        return self.image_type[:2] == ("ORIGINAL", "PRIMARY")

    @property
    def has_geometry(self) -> bool:
        return None not in (self.pixel_spacing, self.orientation, self.position)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(items) != count or any(v != v for v in items):  # NaN check
        return None
    return items


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return default
    return result if result == result else default


def _raw_us_or_ss(value: Any, signed: bool) -> int | None:
    """PixelPaddingValue has VR US or SS; unresolved it may still be raw bytes."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        if len(value) < 2:
            return None
        return int(struct.unpack("<h" if signed else "<H", bytes(value[:2]))[0])
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if value else None
    return None if value is None else _int(value, 0)


def _padding(ds: Dataset, signed: bool) -> tuple[int, int] | None:
    low = _raw_us_or_ss(ds.get("PixelPaddingValue"), signed)
    if low is None:
        return None
    high = _raw_us_or_ss(ds.get("PixelPaddingRangeLimit"), signed)
    return (low, low) if high is None else (min(low, high), max(low, high))


def _decodable(syntax: str) -> bool:
    if syntax in NATIVE_SYNTAXES:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def header_from_dataset(ds: Dataset, path: Path) -> SliceHeader | None:
    """Build a header from a dataset read with ``stop_before_pixels``; None if it is no image."""
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not sop_uid or not series_uid:
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or (
        "1.2.840.10008.1.2"
    )
    signed = _int(ds.get("PixelRepresentation"), 0) == 1
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    bits_allocated = _int(ds.get("BitsAllocated"), 0)
    return SliceHeader(
        path=path,
        sop_instance_uid=sop_uid,
        sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        series_instance_uid=series_uid,
        modality=str(ds.get("Modality", "") or "").upper(),
        image_type=image_type,
        transfer_syntax_uid=syntax,
        rows=_int(ds.get("Rows"), 0),
        columns=_int(ds.get("Columns"), 0),
        number_of_frames=_int(ds.get("NumberOfFrames"), 1),
        bits_allocated=bits_allocated,
        bits_stored=_int(ds.get("BitsStored"), bits_allocated),
        pixel_representation=1 if signed else 0,
        samples_per_pixel=_int(ds.get("SamplesPerPixel"), 1),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        position=position,  # type: ignore[arg-type]
        acquisition_number=_int(ds.get("AcquisitionNumber"), -1)
        if ds.get("AcquisitionNumber") not in (None, "")
        else None,
        slope=_float(ds.get("RescaleSlope"), 1.0) or 1.0,
        intercept=_float(ds.get("RescaleIntercept"), 0.0),
        padding=_padding(ds, signed),
        decodable=_decodable(syntax),
    )


def read_header(path: Path) -> SliceHeader | None:
    """Header of one file, or None if it is not a readable DICOM image instance."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, struct.error) as exc:
        log.debug("event=dicom_unreadable error=%s", type(exc).__name__)
        return None
    except Exception as exc:  # malformed files can raise nearly anything inside pydicom
        log.warning("event=dicom_unreadable error=%s", type(exc).__name__)
        return None
    return header_from_dataset(ds, path)


def read_headers(
    paths: Iterable[Path], *, progress: Callable[[float], None] | None = None
) -> tuple[list[SliceHeader], int]:
    """Headers of every readable image instance and the number of files that were not."""
    paths = list(paths)
    headers: list[SliceHeader] = []
    unreadable = 0
    for n, path in enumerate(paths, 1):
        header = read_header(path)
        if header is None:
            unreadable += 1
        else:
            headers.append(header)
        if progress is not None and (n % 32 == 0 or n == len(paths)):
            progress(n / len(paths))
    log.info(
        "event=dicom_headers files=%d images=%d skipped=%d", len(paths), len(headers), unreadable
    )
    return headers, unreadable
