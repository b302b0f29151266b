"""The STOW-RS response (PS3.18 10.5.3): the HTTP status and the Store Instances Response
Module as DICOM JSON (PS3.18 F.2), built from one result per received instance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from services.receiver import statuses

#: PS3.18 10.5.3: all stored; some stored, some failed; none stored.
OK, ACCEPTED, CONFLICT = 200, 202, 409
#: PS3.18 10.5.3 "Service Unavailable": none stored, every refusal out of resources
#: (A7xx: storage below its reserve, database away): the sender should retry later.
UNAVAILABLE = 503
MEDIA_TYPE = "application/dicom+json"


@dataclass(frozen=True)
class InstanceResult:
    """What became of one part: ``status`` 0x0000 (stored, or already stored), else the
    Failure Reason (0008,1197, PS3.18 I.2.2). UIDs are "" when the part did not say."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int

    @property
    def stored(self) -> bool:
        return self.status == statuses.SUCCESS

    @property
    def transient(self) -> bool:
        return self.status & 0xFF00 == statuses.OUT_OF_RESOURCES


def http_status(results: Sequence[InstanceResult]) -> int:
    """200 when every instance was stored, 202 when some were, else 409 (503 when every
    failure is out of resources)."""
    stored = sum(1 for result in results if result.stored)
    if results and stored == len(results):
        return OK
    if stored:
        return ACCEPTED
    if results and all(result.transient for result in results):
        return UNAVAILABLE
    return CONFLICT


def _reference(result: InstanceResult) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.sop_class_uid
    item.ReferencedSOPInstanceUID = result.sop_instance_uid
    if not result.stored:
        item.FailureReason = result.status
    return item


def response_dataset(results: Sequence[InstanceResult]) -> Dataset:
    """Referenced SOP Sequence (0008,1199) for the stored instances, Failed SOP Sequence
    (0008,1198) with a Failure Reason for the others; each present only when not empty.
    No Retrieve URL: this node offers no WADO-RS."""
    response = Dataset()
    stored = [_reference(result) for result in results if result.stored]
    failed = [_reference(result) for result in results if not result.stored]
    if stored:
        response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    return response


def response_json(results: Sequence[InstanceResult]) -> dict[str, Any]:
    """The DICOM JSON body (PS3.18 F.2) of :func:`response_dataset`."""
    return response_dataset(results).to_json_dict()
