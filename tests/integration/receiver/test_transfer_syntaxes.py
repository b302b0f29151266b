"""Compressed and uncompressed transfer syntaxes are accepted and stored as received."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from services.commands.scu import send_paths
from services.core.broker import InProcessBroker
from services.core.db import Database, Instance
from tests.integration.receiver.harness import receiver_settings, running_receiver

pytestmark = pytest.mark.integration

FILES = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",
    "1.2.840.10008.1.2.1": "CT_small.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2": "ExplVR_BigEnd.dcm",
    "1.2.840.10008.1.2.4.50": "SC_jpeg_no_color_transform.dcm",
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.90": "GDCMJ2K_TextGBR.dcm",
    "1.2.840.10008.1.2.4.91": "693_J2KI.dcm",
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",
}


def _dataset_bytes(path: Path) -> bytes:
    """The encoded data set after the file meta information."""
    data = path.read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")
    return data[144 + meta_length :]


def test_data_set_without_study_uid_is_refused(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    """A JPEG-LS near-lossless test file without Study/Series Instance UID: 0xA900."""
    path = Path(pydicom.data.__file__).parent / "test_files" / "JPEGLSNearLossless_08.dcm"
    settings = receiver_settings(tmp_path, sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        report = send_paths(
            [path], host="127.0.0.1", port=receiver.port, aet="PACS", called_aet="NODULEFLOW"
        )
    assert report.failures == [(path, "status 0xA900")]


def test_transfer_syntaxes_stored_as_received(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    paths = []
    for name in FILES.values():
        path = folder / name
        if name.startswith("MR_small"):  # three encodings of one instance: new UIDs each
            ds = dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = tmp_path / name
            ds.save_as(path)
        paths.append(path)
    settings = receiver_settings(tmp_path, sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        report = send_paths(
            paths, host="127.0.0.1", port=receiver.port, aet="PACS", called_aet="NODULEFLOW"
        )
    assert report.ok, report.summary()
    with db.session() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
    for syntax, source in zip(FILES, paths, strict=True):
        row = rows[str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)]
        assert row.transfer_syntax_uid == syntax
        stored = settings.storage_dir / row.path
        assert _dataset_bytes(stored) == _dataset_bytes(source), source.name  # byte for byte
