"""Pure builders for the resources a report points at: ImagingStudy and Device (Patient is
in :mod:`services.reporter.fhir.patient`).

ImagingStudy id = Study Instance UID; Device id = model name, version and a digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.imagingstudy import ImagingStudy

from services.core.db import Study
from services.reporter.fhir import common as fc


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    number: int | None
    modality: str
    description: str
    instances: int


def build_device(name: str, version: str) -> Device:
    resource = {
        "resourceType": "Device",
        "id": fc.device_id(name, version),
        "identifier": [{"system": fc.DEVICE_SYSTEM, "value": fc.device_id(name, version)}],
        "status": "active",
        "manufacturer": "noduleflow",
        "deviceName": [{"name": name, "type": "model-name"}],
        "type": {"text": "Lung nodule detection and segmentation software"},
        "version": [{"value": version}],
    }
    return Device.model_validate(resource)


def build_imaging_study(study: Study, series: Sequence[SeriesInfo]) -> ImagingStudy:
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.study_instance_uid,
        "identifier": [
            {"system": fc.DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_instance_uid}"}
        ],
        "status": "available",
        "subject": {"reference": f"Patient/{study.patient_key}"},
        "started": fc.fhir_datetime(study.study_date, study.study_time),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s.instances for s in series),
        "description": study.study_description or None,
        "series": [_series(s) for s in series] or None,
    }
    return ImagingStudy.model_validate(_drop_none(resource))


def _series(info: SeriesInfo) -> dict[str, Any]:
    return _drop_none(
        {
            "uid": info.uid,
            "number": info.number,
            "modality": {"system": fc.DCM, "code": info.modality or "OT"},
            "description": info.description or None,
            "numberOfInstances": info.instances,
        }
    )


def _drop_none(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if value is not None}
