from __future__ import annotations

import io

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode

from services.receiver.fast.commands import encode_store_response
from services.receiver.fast.fastpath import encode_file_meta


@pytest.mark.parametrize("sop", ["1.2.3", "1.2.826.0.1.3680043.8.498.7394322877899591360649068"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"])
def test_file_meta_matches_pydicom(sop: str, syntax: str) -> None:
    reference = io.BytesIO()
    meta = create_file_meta(
        sop_class_uid=CTImageStorage, sop_instance_uid=UID(sop), transfer_syntax=UID(syntax)
    )
    write_file_meta_info(reference, meta)  # type: ignore[arg-type]
    assert encode_file_meta(CTImageStorage, sop, syntax) == reference.getvalue()


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC000])
def test_store_response_matches_pynetdicom(status: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = "1.2.3.45"
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_store_response(CTImageStorage, "1.2.3.45", 513, status) == encode(
        message.command_set, True, True
    )


def test_pdv_list_splits_items_without_copying() -> None:
    from services.receiver.fast.fastpath import _pdv_list

    def item(context: int, data: bytes) -> bytes:
        return (len(data) + 1).to_bytes(4, "big") + bytes([context]) + data

    body = memoryview(item(1, b"\x03command") + item(3, b"\x00" + b"x" * 100))
    items = _pdv_list(body)
    assert items is not None
    assert [(c, bytes(d)) for c, d in items] == [(1, b"\x03command"), (3, b"\x00" + b"x" * 100)]
    assert all(isinstance(d, memoryview) for _, d in items)
    assert _pdv_list(body[:-1]) is None  # truncated item
    assert _pdv_list(memoryview(b"")) is None
    assert _pdv_list(memoryview(b"\x00\x00\x00\x01\x01")) is None  # item without a header


def test_context_copy_is_independent() -> None:
    from pynetdicom.presentation import build_context

    from services.receiver.fast.fastpath import _copy_contexts

    original = [build_context(CTImageStorage, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])]
    [clone] = _copy_contexts(original)
    assert clone is not original[0]
    assert (
        clone.abstract_syntax == CTImageStorage
        and clone.transfer_syntax == original[0].transfer_syntax
    )
    clone.transfer_syntax.append("1.2.840.10008.1.2.4.70")
    clone.context_id = 3
    assert len(original[0].transfer_syntax) == 2 and original[0].context_id is None
    assert _copy_contexts({"a": [1]}) == {"a": [1]}  # anything else: a real deep copy


@pytest.mark.parametrize("originator", [None, "MOVESCU"])
def test_store_command_decodes_like_pydicom(originator: str | None) -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage

    from services.receiver.fast.commands import decode_store_command

    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.739432287789959136064906826629"
    req.Priority = 2
    if originator:
        req.MoveOriginatorApplicationEntityTitle = originator
        req.MoveOriginatorMessageID = 3
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    data = encode(message.command_set, True, True)
    assert data is not None
    fast = decode_store_command(data)
    assert fast is not None and fast.CommandField == 0x0001
    assert fast.CommandDataSetType == message.command_set.CommandDataSetType

    def primitive(command_set: object) -> C_STORE:
        msg = DIMSEMessage()
        msg.command_set = command_set  # type: ignore[assignment]
        msg.__class__ = C_STORE_RQ
        return msg.message_to_primitive()  # type: ignore[return-value]

    reference = primitive(decode(io.BytesIO(data), True, True))
    ours = primitive(fast)
    for field in (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "Priority",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
    ):
        assert getattr(ours, field) == getattr(reference, field), field


def test_other_commands_are_left_to_pydicom() -> None:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.sop_class import Verification

    from services.receiver.fast.commands import decode_store_command

    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    data = encode(message.command_set, True, True)
    assert data is not None
    assert decode_store_command(data) is None
    assert decode_store_command(data[:-3]) is None  # truncated


def test_command_pdu_matches_pynetdicom() -> None:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from services.receiver.fast.commands import command_pdu

    command = encode_store_response(CTImageStorage, "1.2.3.45", 7, 0x0000)
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[5, b"\x03" + command]]  # type: ignore[list-item]
    assert command_pdu(5, command) == P_DATA_TF(primitive).encode()
