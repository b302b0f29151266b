"""Cheaper versions of pynetdicom (3.0) steps on the C-STORE receive path.

Measured per 512×512 CT instance, pynetdicom spends much of its time in generic machinery:
the received file's meta header built with pydicom datasets, PDUs read 4 KiB at a time into
growing buffers and copied several times on their way to DIMSE, C-STORE command sets
decoded and responses encoded through pydicom, ~170 presentation contexts deep-copied per
association. :func:`install` replaces exactly those steps with versions that produce the
same bytes and the same primitives (unit tests compare them with pynetdicom's own);
anything unusual (other PDU types or states, bound PDU-level event handlers, other DIMSE
messages) still takes pynetdicom's path. The command-set parts live in
:mod:`services.receiver.fast.commands`. Installed (and undone) only through
:func:`services.receiver.fast.install`.
"""

from __future__ import annotations

import copy
import logging
import struct
from typing import Any

from pydicom.filewriter import write_file_meta_info as _pydicom_write_meta
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    dimse_messages,
    dul,
    evt,
    transport,
)
from pynetdicom.dsutils import create_file_meta as _pynetdicom_create_meta
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from services.receiver.fast.patching import Patch
from services.receiver.fast.reactor import deliver

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


# --------------------------------------------------------------------------- P-DATA-TF

_P_DATA_TF = 0x04
_A_RELEASE_RQ = 0x05
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)  # PS3.8 9.3.1
_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


def _pdv_list(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The PDV items of a P-DATA-TF PDU body (PS3.8 9.3.5), without copying; None if the
    item lengths do not add up."""
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((body[offset + 4], body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items or None


def release_requested(assoc: Any) -> bool:
    """Whether the peer asked to release ``assoc`` (A-RELEASE-RQ received, PS3.8 7.2)."""
    return bool(getattr(assoc, "is_released", False)) or bool(
        getattr(assoc, "_noduleflow_release_requested", False)
    )


def _read_pdu_data(self: Any) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with a short cut for P-DATA-TF in
    Sta6 (PS3.8 9.2, DT-2: the data goes straight to DIMSE): no PDU objects, no copies, no
    trip through the event queue, and a request it completes may be served on this thread
    (:func:`~services.receiver.fast.reactor.deliver`). Every other PDU, state or bound
    PDU/FSM event handler takes pynetdicom's own path."""
    try:
        header = self.socket.recv(6)
        if len(header) != 6:
            self.event_queue.put("Evt17")  # transport connection closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            self.event_queue.put("Evt19")  # unrecognised PDU
            return
        body = self.socket.recv(length) if length else bytearray()
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return
    if len(body) != length:
        self.event_queue.put("Evt17")
        return
    if (
        pdu_type == _P_DATA_TF
        and self.state_machine.current_state == "Sta6"
        and self.event_queue.empty()
        and self._recv_pdu.empty()
        and not any(self.assoc.get_handlers(e) for e in _PDU_EVENTS)
    ):
        items = _pdv_list(memoryview(body))
        if items is None:
            self.event_queue.put("Evt19")
            return
        primitive = P_DATA()
        primitive._presentation_data_value_list = items  # type: ignore[assignment]
        deliver(self.assoc, primitive)  # a complete plain C-STORE may be served right here
        return
    if pdu_type == _A_RELEASE_RQ:
        # Remembered before the reply goes out: the peer may close the connection before
        # the association thread marks itself released (see ``release_requested``).
        self.assoc._noduleflow_release_requested = True
    try:
        pdu, event = self._decode_pdu(header + body)
    except Exception:
        log.warning("event=pdu_undecodable type=%d length=%d", pdu_type, length)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


# --------------------------------------------------------------------------- contexts


def _copy_contexts(value: Any, memo: Any = None) -> Any:
    """``deepcopy`` as pynetdicom's request handler uses it (once per association, on our
    ~170 supported presentation contexts): the one mutable part of a context is its
    transfer syntax list, so copy that and the object, not every UID (~25 ms → <1 ms)."""
    if isinstance(value, list) and all(isinstance(cx, PresentationContext) for cx in value):
        copies = []
        for cx in value:
            clone = copy.copy(cx)
            clone._transfer_syntax = list(cx._transfer_syntax)
            copies.append(clone)
        return copies
    return copy.deepcopy(value, memo)


def patches() -> list[Patch]:
    """File meta, PDU reads and presentation-context copies (see the module docstring)."""
    return [
        Patch(dimse_messages, "create_file_meta", _create_meta),
        Patch(dimse_messages, "write_file_meta_info", _write_meta),
        Patch(transport.AssociationSocket, "recv", _recv),
        Patch(dul.DULServiceProvider, "_read_pdu_data", _read_pdu_data),
        Patch(transport, "deepcopy", _copy_contexts),
    ]
