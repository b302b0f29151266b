"""Key images: one Secondary Capture per nodule, plus the same picture as PNG.

Why a Secondary Capture rather than a Key Object Selection: a KOS only flags existing
slices and its display depends on the viewer (many PACS and web viewers ignore it or show
it as a bare list), and it cannot show *which* blob the AI means. An RGB SC with the
contour burned into the lung-windowed slice of largest extent, and the size/kind written
on it, looks the same in every viewer, on film and in the web study page (as PNG).
``BurnedInAnnotation`` is ``YES`` and the SC cites its source slice (SourceImageSequence).
"""

from __future__ import annotations

import io

import numpy as np
from highdicom.sc import SCImage
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from services.reporter.dicom import codes as nf
from services.reporter.dicom.model import Algorithm, NoduleFinding, OutputUids

KEY_SERIES_BASE = 9300
LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)
MIN_SIDE = 512
CONTOUR_RGB = (255, 210, 0)
TEXT_RGB = (255, 255, 255)


def window(hu: NDArray[np.floating], level: float, width: float) -> NDArray[np.uint8]:
    """Linear VOI window (PS3.3 C.11.2.1.2) to 8 bits."""
    low = level - width / 2
    scaled = (np.asarray(hu, dtype=np.float64) - low) / width * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def caption(finding: NoduleFinding, algorithm: Algorithm) -> list[str]:
    return [
        f"{finding.label}: {finding.diameter_mm:.1f} mm {finding.kind}",
        f"axes {finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f} mm, "
        f"vol {finding.volume_mm3:.0f} mm3",
        f"Lung-RADS {finding.lung_rads}, confidence {finding.confidence:.2f}",
        f"AI: {algorithm.name} {algorithm.version}",
    ]


def render(
    hu_slice: NDArray[np.floating], mask2d: NDArray[np.bool_], lines: list[str]
) -> NDArray[np.uint8]:
    """RGB picture: lung-windowed slice, upscaled to at least MIN_SIDE, contour and text.

    ``mask2d`` has the slice's shape. Deterministic: the same input gives the same pixels.
    """
    if hu_slice.shape != mask2d.shape:
        raise ValueError("mask and slice shapes differ")
    factor = max(1, int(np.ceil(MIN_SIDE / min(hu_slice.shape))))
    gray = window(hu_slice, *LUNG_WINDOW)
    gray = np.kron(gray, np.ones((factor, factor), dtype=np.uint8))
    mask = np.kron(mask2d.astype(np.uint8), np.ones((factor, factor), dtype=np.uint8)) > 0
    # A ring just outside the mask, with a small gap, so the nodule's border stays visible.
    gap, width = max(1, factor // 4), max(1, factor // 3)
    near = ndimage.binary_dilation(mask, iterations=gap)
    edge = ndimage.binary_dilation(mask, iterations=gap + width) & ~near
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgb[edge] = CONTOUR_RGB
    rgb = with_inset(rgb, mask)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    size = max(12, image.height // 40)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (OSError, TypeError):
        font = ImageFont.load_default()
    y = 4
    for line in lines:
        draw.text((6, y), line, fill=TEXT_RGB, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += size + 4
    return np.asarray(image, dtype=np.uint8).copy()


def with_inset(rgb: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """Add a magnified view of the nodule in the lower right corner when it is small on
    the picture (a 5 mm nodule is ~7 pixels on a 512 matrix); unchanged otherwise."""
    if not mask.any():
        return rgb
    rows, cols = np.nonzero(mask)
    extent = int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
    side = max(48, 3 * extent)
    zoom = (min(rgb.shape[:2]) // 3) // side
    if zoom < 2:
        return rgb
    height, width = rgb.shape[:2]
    r0 = int(np.clip((rows.min() + rows.max()) // 2 - side // 2, 0, height - side))
    c0 = int(np.clip((cols.min() + cols.max()) // 2 - side // 2, 0, width - side))
    crop = rgb[r0 : r0 + side, c0 : c0 + side]
    inset = np.kron(crop, np.ones((zoom, zoom, 1), dtype=np.uint8))
    out = rgb.copy()
    size = inset.shape[0]
    # The corner farthest from the nodule (top left holds the text).
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    corners = [(height - size - 6, width - size - 6), (height - size - 6, 6), (6, width - size - 6)]
    top, left = max(
        corners, key=lambda c: (c[0] + size / 2 - cy) ** 2 + (c[1] + size / 2 - cx) ** 2
    )
    out[top - 2 : top + size + 2, left - 2 : left + size + 2] = 255  # frame
    out[top : top + size, left : left + size] = inset
    return out


def png_bytes(rgb: NDArray[np.uint8]) -> bytes:
    """The key image as PNG for the API. zlib level 1: on a real 512x512 CT slice 19 ms
    and 256 kB against Pillow's default level 6, 78 ms and 262 kB."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def slice_hu(source: Dataset) -> NDArray[np.float32]:
    """Modality-LUT (rescale) applied pixels of a CT slice."""
    pixels = source.pixel_array.astype(np.float32)
    slope = float(getattr(source, "RescaleSlope", 1) or 1)
    intercept = float(getattr(source, "RescaleIntercept", 0) or 0)
    return pixels * slope + intercept


def slice_mask(finding: NoduleFinding, k: int, rows: int, cols: int) -> NDArray[np.bool_]:
    """The finding's mask on volume slice ``k``, in full-slice coordinates."""
    k0, j0, i0, k1, j1, i1 = finding.bbox
    mask = np.zeros((rows, cols), dtype=bool)
    if k0 <= k < k1:
        mask[j0:j1, i0:i1] = finding.mask[k - k0]
    return mask


def _orientation(header: Dataset) -> tuple[str, str]:
    """PatientOrientation letters (PS3.3 C.7.6.1.1.1) of the row and column directions."""
    iop = [float(v) for v in getattr(header, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def axis(vector: list[float]) -> str:
        order = np.argsort(-np.abs(vector))
        out = ""
        for index in order:
            if abs(vector[index]) > 0.25:
                out += letters[index][0 if vector[index] > 0 else 1]
        return out or "L"

    return axis(iop[:3]), axis(iop[3:])


def build_key_image(
    *,
    source: Dataset,
    header: Dataset,
    finding: NoduleFinding,
    algorithm: Algorithm,
    uids: OutputUids,
    supersedes_version: int | None = None,
) -> tuple[SCImage, NDArray[np.uint8]]:
    """The SC key image of ``finding`` on ``source`` (its largest-extent slice).

    ``source`` is the read CT slice (pixels); ``header`` its sanitised header, which is
    all that is copied into the SC. Returns the SC and its RGB pixels (for the PNG).
    """
    k = finding.largest_slice()
    hu = slice_hu(source)
    rgb = render(hu, slice_mask(finding, k, *hu.shape), caption(finding, algorithm))
    charset = header.get("SpecificCharacterSet")
    description = "Lung nodule AI key images"
    if supersedes_version is not None:
        description += f" (supersedes v{supersedes_version})"
    sc = SCImage(
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=uids.key_series,
        series_number=KEY_SERIES_BASE + uids.version,
        sop_instance_uid=uids.key_instance(finding.index),
        instance_number=finding.index,
        manufacturer=nf.MANUFACTURER,
        patient_id=str(header.PatientID),
        patient_name=header.PatientName,
        patient_birth_date=str(header.PatientBirthDate),
        patient_sex=str(header.PatientSex) or None,
        accession_number=str(header.AccessionNumber),
        study_id=str(header.StudyID),
        study_date=str(header.StudyDate) or None,
        study_time=str(header.StudyTime) or None,
        referring_physician_name=header.ReferringPhysicianName,
        patient_orientation=_orientation(header),
        series_description=description,
        specific_character_set=charset,
    )
    sc.Laterality = ""  # Type 2C; a chest slice shows both lungs
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = "; ".join(caption(finding, algorithm))[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc, rgb
