"""Cheaper versions of two pynetdicom steps on the C-STORE receive path.

pynetdicom (3.0) builds each received file's meta header with pydicom datasets
(~0.3 ms per instance) and reads every PDU from the socket 4 KiB at a time into a growing
``bytearray``. The replacements below produce the same bytes: the File Meta Information of
PS3.10 §7.1 encoded directly, and the same PDU bytes read with ``recv_into`` into one
buffer. Both are installed by :func:`install`; pynetdicom's behaviour is otherwise unchanged.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pydicom.filewriter import write_file_meta_info as _pydicom_write_meta
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    dimse,
    dimse_messages,
    evt,
    transport,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta as _pynetdicom_create_meta
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """File Meta Information group (0002) in Explicit VR Little Endian (PS3.10 §7.1)."""
    version = _IMPLEMENTATION_VERSION.encode("ascii")
    if len(version) % 2:
        version += b" "
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax)),
            _element(0x0002, 0x0012, b"UI", _ui(_IMPLEMENTATION_UID)),
            _element(0x0002, 0x0013, b"SH", version),
        )
    )
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def _create_meta(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any) -> Any:
    values = [str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax)]
    if any(len(v) > 1024 for v in values):  # absurd values: let pydicom deal with them
        return _pynetdicom_create_meta(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax,
        )
    return encode_file_meta(*values)


def _write_meta(fp: Any, meta: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(meta, bytes):
        fp.write(meta)
    else:
        _pydicom_write_meta(fp, meta, *args, **kwargs)


#: No PDU we accept comes near this: our maximum P-DATA PDU is 128 KiB and association
#: requests are a few KiB. A larger declared length is refused before anything is
#: allocated (pynetdicom itself would try to read up to 4 GiB, pydicom/pynetdicom#1086).
MAX_PDU_READ = 16 << 20


def _recv(self: Any, nr_bytes: int) -> bytearray:
    """Read exactly ``nr_bytes`` (fewer if the peer closed the connection, nothing at all
    for an implausible length: pynetdicom then treats the connection as closed)."""
    if nr_bytes > MAX_PDU_READ:
        log.warning("event=pdu_refused reason=length declared=%d", nr_bytes)
        return bytearray()
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    sock = self.socket
    while read < nr_bytes:
        n = sock.recv_into(view[read:], nr_bytes - read)
        if not n:
            del view
            return buffer[:read]
        read += n
    del view
    return buffer


# --------------------------------------------------------------------------- C-STORE-RSP

_C_STORE_RSP = 0x8001  # PS3.7 E.1-1 Command Field of C-STORE-RSP
_NO_DATA_SET = 0x0101  # PS3.7 E.1-1 Command Data Set Type: no data set


def _implicit(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def encode_store_response(
    sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int
) -> bytes:
    """C-STORE-RSP command set, Implicit VR Little Endian (PS3.7 §9.3.1.2, §6.3.1)."""
    body = b"".join(
        (
            _implicit(0x0002, _ui(sop_class_uid)),
            _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", _NO_DATA_SET)),
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _ui(sop_instance_uid)),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


_original_send_msg = dimse.DIMSEServiceProvider.send_msg


def _send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """Encode plain C-STORE responses directly; everything else as pynetdicom does."""
    if (
        isinstance(primitive, C_STORE)
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and primitive.AffectedSOPClassUID
        and primitive.AffectedSOPInstanceUID
        and isinstance(primitive.Status, int)
        and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
    ):
        command = encode_store_response(
            str(primitive.AffectedSOPClassUID),
            str(primitive.AffectedSOPInstanceUID),
            int(primitive.MessageIDBeingRespondedTo),
            int(primitive.Status),
        )
        if len(command) + 6 <= (self.maximum_pdu_size or 1 << 30):
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


def install() -> None:
    dimse_messages.create_file_meta = _create_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = _write_meta  # type: ignore[assignment]
    transport.AssociationSocket.recv = _recv  # type: ignore[method-assign]
    dimse.DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
