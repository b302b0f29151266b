"""C-STORE command sets without pydicom: responses encoded and plain requests decoded
directly (PS3.7 9.3.1, E.1; Implicit VR Little Endian, PS3.7 6.3.1). Installed (and undone)
only through :func:`services.receiver.fast.install`."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pynetdicom import dimse, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode as _pynetdicom_decode
from pynetdicom.pdu_primitives import P_DATA

from services.receiver.fast.patching import Patch


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


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


def command_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one whole command set in one PDV (PS3.8 9.3.5, E.2)."""
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command  # last command
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


_original_send_msg = dimse.DIMSEServiceProvider.send_msg
_SEND_EVENTS = (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)


def _send_now(dul: Any, pdu: bytes) -> bool:
    """Send ``pdu`` from the calling (association) thread, sparing the hand-over to the DUL
    thread, where that changes nothing: plain TCP (an SSL socket is not shared between
    threads), data transfer state (Sta6, where DT-1 sends and stays), nothing queued before
    it, no handler that would watch the send."""
    sock = getattr(dul.socket, "socket", None)
    if (
        type(sock) is not socket.socket
        or dul.state_machine.current_state != "Sta6"
        or not dul.to_provider_queue.empty()
        or any(dul.assoc.get_handlers(e) for e in _SEND_EVENTS)
    ):
        return False
    try:
        sock.sendall(pdu)
    except OSError:
        dul.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does
    return True


def send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """Encode plain C-STORE responses directly (and send them at once where that is safe);
    everything else as pynetdicom does."""
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
            if _send_now(self.dul, command_pdu(context_id, command)):
                return
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


#: The elements of a C-STORE-RQ command set (PS3.7 9.3.1.1): tag → (keyword, is text).
_STORE_RQ_ELEMENTS: dict[int, tuple[str, bool]] = {
    0x0000: ("CommandGroupLength", False),
    0x0002: ("AffectedSOPClassUID", True),
    0x0100: ("CommandField", False),
    0x0110: ("MessageID", False),
    0x0700: ("Priority", False),
    0x0800: ("CommandDataSetType", False),
    0x1000: ("AffectedSOPInstanceUID", True),
    0x1030: ("MoveOriginatorApplicationEntityTitle", True),
    0x1031: ("MoveOriginatorMessageID", False),
}


class _Element:
    __slots__ = ("VM", "keyword", "tag", "value")

    def __init__(self, tag: int, keyword: str, value: Any) -> None:
        self.tag, self.keyword, self.value, self.VM = tag, keyword, value, 1


class StoreCommand:
    """A decoded C-STORE-RQ command set with the parts of ``pydicom.Dataset`` that
    pynetdicom uses on it (attribute access by keyword, ``in``, iteration)."""

    def __init__(self, elements: list[_Element]) -> None:
        self._elements = elements
        self._by_keyword = {e.keyword: e.value for e in elements}

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.__dict__["_by_keyword"][keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._by_keyword

    def __iter__(self) -> Any:
        return iter(self._elements)


def decode_store_command(data: bytes) -> StoreCommand | None:
    """Decode an Implicit VR Little Endian command set if it is a plain C-STORE-RQ (the
    elements of PS3.7 9.3.1.1 only); None for anything else."""
    elements = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", data, offset)
        spec = _STORE_RQ_ELEMENTS.get(element) if group == 0 else None
        if spec is None or offset + 8 + length > end:
            return None
        raw = data[offset + 8 : offset + 8 + length]
        keyword, is_text = spec
        if is_text:
            value: Any = raw.decode("ascii", "replace").rstrip("\x00 ")
        elif length == 2:
            value = struct.unpack("<H", raw)[0]
        elif length == 4:
            value = struct.unpack("<I", raw)[0]
        else:
            return None
        elements.append(_Element(group << 16 | element, keyword, value))
        offset += 8 + length
    command = StoreCommand(elements)
    if getattr(command, "CommandField", None) != 0x0001:
        return None
    return command


def decode(stream: Any, is_implicit_vr: bool, is_little_endian: bool, **kw: Any) -> Any:
    """``pynetdicom.dsutils.decode`` for command sets, with plain C-STORE-RQs decoded
    directly; pydicom decodes everything else."""
    if is_implicit_vr and is_little_endian and not kw.get("deflated"):
        command = decode_store_command(stream.getvalue())
        if command is not None:
            return command
    return _pynetdicom_decode(stream, is_implicit_vr, is_little_endian, **kw)


def patches() -> list[Patch]:
    """C-STORE responses sent and C-STORE requests decoded without pydicom."""
    return [
        Patch(dimse.DIMSEServiceProvider, "send_msg", send_msg),
        Patch(dimse_messages, "decode", decode),
    ]
