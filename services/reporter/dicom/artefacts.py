"""Artefact layout and writing: ``<outbox>/<study uid>/v<version>/``.

The folder holds ``sr.dcm``, ``seg.dcm`` (when there are segments), ``key-<index>.dcm`` and
``key-<index>.png`` (index = Finding.index), and ``kos.dcm`` (the Key Object Selection
flagging the key slices, key images and SR; only when there are key images). Every file is
written atomically (temporary file in the same folder, fsync, rename), so a reader never
sees half a file, and a rebuild replaces a file with the same instance (same SOP Instance
UID).
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from services.core.settings import Settings
from services.core.storage import UnsafeKeyError
from services.core.uids import is_valid_uid
from services.reporter.dicom.inputs import JobInputs
from services.reporter.dicom.keyimage import build_key_image, png_bytes
from services.reporter.dicom.kos import build_kos
from services.reporter.dicom.seg import build_seg, seg_header, segment_numbers
from services.reporter.dicom.sr import SegReference, build_sr

log = logging.getLogger(__name__)


def artefact_dir(settings: Settings, study_uid: str, version: int) -> Path:
    """Folder of one job's artefacts; the study UID is validated before it becomes a path."""
    if not is_valid_uid(study_uid):
        raise UnsafeKeyError(f"not a valid UID: {study_uid[:80]!r}")
    if int(version) < 1:
        raise ValueError("job versions start at 1")
    return Path(settings.outbox_dir) / study_uid / f"v{int(version)}"


def outbox_relative(settings: Settings, path: Path) -> str:
    """``path`` relative to the outbox folder (what Delivery rows store), when inside it."""
    try:
        return str(Path(path).relative_to(Path(settings.outbox_dir)))
    except ValueError:
        return str(path)


def resolve_outbox_path(settings: Settings, stored: str) -> Path:
    """The file a Delivery row's ``path`` names; refuses paths that leave the outbox."""
    root = Path(settings.outbox_dir).resolve()
    path = Path(stored)
    target = (path if path.is_absolute() else root / path).resolve()
    if root not in target.parents:
        raise UnsafeKeyError(f"delivery path outside the outbox: {stored[:80]!r}")
    return target


@dataclass(frozen=True)
class Artefact:
    """One written file that goes out as a DICOM instance."""

    kind: str  # sr | seg | key-image-<index> | kos
    path: Path
    sop_instance_uid: str
    index: int | None = None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def predecessor_header(inputs: JobInputs) -> Dataset | None:
    """Identity of the SR of the superseded job (its UIDs are derived, not looked up)."""
    if inputs.supersedes_version is None:
        return None
    previous = inputs.uids.previous(inputs.supersedes_version)
    header = Dataset()
    header.SOPClassUID = Comprehensive3DSRStorage
    header.SOPInstanceUID = previous.sr_instance
    header.SeriesInstanceUID = previous.sr_series
    header.StudyInstanceUID = inputs.study_instance_uid
    return header


def write_artefacts(settings: Settings, inputs: JobInputs) -> list[Artefact]:
    """Build SEG, key images, SR and KOS for one job and write them; SR last, so a folder
    with ``sr.dcm`` is complete. Returns the artefacts in sending order: SEG, SR (the
    report a radiologist opens, right after the SEG it cites), key images, then the KOS
    (after everything it flags)."""
    folder = artefact_dir(settings, inputs.study_instance_uid, inputs.version)
    written: list[Artefact] = []
    key_slices: list[Dataset] = []
    key_images: list[Dataset] = []
    seg_ref: SegReference | None = None
    if any(f.has_mask for f in inputs.findings):
        seg = build_seg(
            source_images=inputs.headers,
            findings=inputs.findings,
            algorithm=inputs.algorithm,
            uids=inputs.uids,
            supersedes_version=inputs.supersedes_version,
        )
        atomic_write(folder / "seg.dcm", dataset_bytes(seg))
        written.append(Artefact("seg", folder / "seg.dcm", str(seg.SOPInstanceUID)))
        seg_ref = SegReference(
            str(seg.SOPInstanceUID), segment_numbers(inputs.findings), seg_header(seg)
        )
    for finding in sorted(inputs.findings, key=lambda f: f.index):
        if not finding.has_mask:
            log.warning(
                "event=key_image_skipped job=%s index=%s reason=no_mask",
                inputs.job_id,
                finding.index,
            )
            continue
        k = finding.largest_slice()
        sc, rgb = build_key_image(
            source=inputs.read_slice(k),
            header=inputs.headers[k],
            finding=finding,
            algorithm=inputs.algorithm,
            uids=inputs.uids,
            supersedes_version=inputs.supersedes_version,
        )
        atomic_write(folder / f"key-{finding.index}.png", png_bytes(rgb))
        path = folder / f"key-{finding.index}.dcm"
        atomic_write(path, dataset_bytes(sc))
        key_slices.append(inputs.headers[k])
        key_images.append(sc)
        written.append(
            Artefact(f"key-image-{finding.index}", path, str(sc.SOPInstanceUID), finding.index)
        )
    sr = build_sr(
        source_images=inputs.headers,
        findings=inputs.findings,
        algorithm=inputs.algorithm,
        uids=inputs.uids,
        seg=seg_ref,
        predecessor=predecessor_header(inputs),
        supersedes_version=inputs.supersedes_version,
        incomplete=inputs.incomplete,
        evidence=inputs.evidence,
    )
    kos_artefact: Artefact | None = None
    if key_images:
        kos = build_kos(
            key_slices=key_slices,
            key_images=key_images,
            sr=sr,
            algorithm=inputs.algorithm,
            uids=inputs.uids,
            supersedes_version=inputs.supersedes_version,
        )
        atomic_write(folder / "kos.dcm", dataset_bytes(kos))
        kos_artefact = Artefact("kos", folder / "kos.dcm", str(kos.SOPInstanceUID))
    atomic_write(folder / "sr.dcm", dataset_bytes(sr))
    after_seg = 1 if seg_ref is not None else 0
    written.insert(after_seg, Artefact("sr", folder / "sr.dcm", str(sr.SOPInstanceUID)))
    if kos_artefact is not None:
        written.append(kos_artefact)
    log.info(
        "event=artefacts_written job=%s version=%s findings=%s files=%s",
        inputs.job_id,
        inputs.version,
        len(inputs.findings),
        len(written),
    )
    return written
