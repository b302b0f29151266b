"""The STOW-RS response: HTTP status by outcome, DICOM JSON per PS3.18 F.2."""

from __future__ import annotations

from pydicom.dataset import Dataset

from services.receiver import statuses
from services.receiver.dicomweb.response import InstanceResult, http_status, response_json

CT = "1.2.840.10008.5.1.4.1.1.2"
STORED = InstanceResult(CT, "1.2.3.1", statuses.SUCCESS)
CONFLICT = InstanceResult(CT, "1.2.3.2", statuses.SOP_INSTANCE_CONFLICT)
FULL = InstanceResult(CT, "1.2.3.3", statuses.OUT_OF_RESOURCES)
GARBAGE = InstanceResult("", "", statuses.CANNOT_UNDERSTAND)


def test_http_status_by_outcome() -> None:
    assert http_status([STORED, STORED]) == 200
    assert http_status([STORED, CONFLICT]) == 202
    assert http_status([CONFLICT, GARBAGE]) == 409
    assert http_status([FULL, FULL]) == 503  # retry later
    assert http_status([FULL, CONFLICT]) == 409


def test_response_lists_stored_and_failed_instances_with_reasons() -> None:
    body = response_json([STORED, CONFLICT, GARBAGE])
    assert body["00081199"]["vr"] == "SQ"
    (stored,) = body["00081199"]["Value"]
    assert stored["00081150"] == {"vr": "UI", "Value": [CT]}
    assert stored["00081155"] == {"vr": "UI", "Value": ["1.2.3.1"]}
    assert "00081197" not in stored
    conflict, garbage = body["00081198"]["Value"]
    assert conflict["00081197"] == {"vr": "US", "Value": [0xC211]}
    assert conflict["00081155"]["Value"] == ["1.2.3.2"]
    assert garbage["00081197"]["Value"] == [0xC000]
    assert "Value" not in garbage["00081155"]  # the part named no instance
    parsed = Dataset.from_json(body)  # what a client (dicomweb-client) reads back
    assert [item.FailureReason for item in parsed.FailedSOPSequence] == [0xC211, 0xC000]


def test_all_stored_has_no_failed_sequence() -> None:
    body = response_json([STORED])
    assert set(body) == {"00081199"}
