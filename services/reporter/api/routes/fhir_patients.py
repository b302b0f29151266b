"""FHIR Patient: read, and search by MRN (``identifier=[system|]value``) or ``_id``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.reporter.api.auth import Principal
from services.reporter.api.deps import SessionDep, SettingsDep, require
from services.reporter.api.errors import ApiError
from services.reporter.api.routes import audited
from services.reporter.api.search_input import SearchItems
from services.reporter.fhir import patient
from services.reporter.fhir.response import FhirResponse, entry, parse_request, resource_response

router = APIRouter(prefix="/fhir/Patient", tags=["fhir"])
TYPE = "Patient"
PatientReader = Annotated[Principal, Depends(require(TYPE, interaction="r"))]
PatientSearcher = Annotated[Principal, Depends(require(TYPE, interaction="s"))]


@router.get("", response_class=FhirResponse)
@router.post("/_search", response_class=FhirResponse)
def search_patients(
    request: Request,
    items: SearchItems,
    session: SessionDep,
    settings: SettingsDep,
    who: PatientSearcher,
) -> Response:
    search = parse_request(request, TYPE, patient.PATIENT_SPEC, items)
    total, studies = patient.search_patients(
        session=session, search=search, default_system=settings.mrn_system
    )
    matches = [
        entry(patient.build_patient(s, settings.mrn_system).model_dump(mode="json"))
        for s in studies
    ]
    return audited.searchset(request, session, settings, who, search, total, matches)


@router.get("/{patient_id}", response_class=FhirResponse)
def read_patient(
    patient_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: PatientReader,
) -> Response:
    found = patient.patients_of(session=session, keys=[patient_id[:64]])
    if not found:
        raise ApiError(404, "Patient not found")
    audited.read(request, session, who, TYPE, found[0].patient_key)
    return resource_response(patient.build_patient(found[0], settings.mrn_system))
