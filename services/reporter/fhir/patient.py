"""FHIR Patient: read-only, built from the DICOM header of the patient's latest study.

``Patient.id`` is the opaque ``Study.patient_key``. The MRN (DICOM Patient ID) is the
``MR`` identifier; its ``system`` is the one the study's Issuer of Patient ID (0010,0021)
names when that is a URI or an OID (``Study.patient_id_system``), else the configured
``NODULEFLOW_MRN_SYSTEM``, else none. :func:`identifier_condition` is the one place that
turns an ``identifier`` token into SQL, for ``Patient?identifier=`` and for the chained
``DiagnosticReport?patient.identifier=`` / ``subject:Patient.identifier=``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.patient import Patient
from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from services.core.db import Study
from services.reporter.fhir import common as fc
from services.reporter.fhir import subset
from services.reporter.fhir.response import entry
from services.reporter.fhir.search import Search, Spec, Token

_REF = frozenset({""})
PATIENT_SPEC = Spec(
    params={"identifier": ("token", _REF), "_id": ("token", _REF)},
    sorts={"_id": "id"},
    elements=subset.elements("Patient"),
)


def mrn_system(study: Study, default_system: str) -> str:
    """The identifier system of ``study``'s Patient ID ("" when none is known)."""
    return study.patient_id_system or default_system


def mrn_identifier(study: Study, default_system: str) -> dict[str, Any] | None:
    """The MRN as a FHIR Identifier (type ``MR``), or None when the study has no Patient ID."""
    if not study.patient_id:
        return None
    identifier: dict[str, Any] = {
        "use": "usual",
        "type": {"coding": [{"system": fc.V2_0203, "code": "MR"}], "text": "Patient ID"},
        "value": study.patient_id,
    }
    system = mrn_system(study, default_system)
    if system:
        identifier["system"] = system
    issuer = study.issuer_of_patient_id.strip()
    if issuer:
        identifier["assigner"] = {"display": issuer}
    return identifier


def build_patient(study: Study, default_system: str = "") -> Patient:
    """The Patient of ``study`` (name, sex, birth date and MRN from its DICOM header)."""
    name = fc.person_name(study.patient_name)
    label = html.escape(name["text"] if name else "Unnamed patient")
    identifier = mrn_identifier(study, default_system)
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": study.patient_key,
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{label}</div>',
        },
        "identifier": [identifier] if identifier else None,
        "name": [name] if name else None,
        "gender": fc.gender(study.patient_sex),
        "birthDate": fc.fhir_date(study.patient_birth_date),
    }
    return Patient.model_validate({k: v for k, v in resource.items() if v is not None})


def identifier_condition(token: Token, default_system: str) -> ColumnElement[bool]:
    """Studies whose MRN matches ``token``: ``value`` (any system), ``|value`` (no system)
    or ``system|value``, where a study's system is :func:`mrn_system`."""
    same_value = Study.patient_id == token.code
    if token.system is None:
        return same_value
    if token.system == "":
        return false() if default_system else and_(same_value, Study.patient_id_system == "")
    if token.system == default_system:
        system = or_(Study.patient_id_system == token.system, Study.patient_id_system == "")
    else:
        system = Study.patient_id_system == token.system
    return and_(same_value, system)


def identifier_filters(
    search: Search, names: Sequence[str], default_system: str
) -> list[ColumnElement[bool]]:
    """One condition per AND-ed value of the identifier parameters ``names`` (OR within)."""
    out: list[ColumnElement[bool]] = []
    for name in names:
        for ors in search.values(name):
            conds = [identifier_condition(v, default_system) for v in ors if isinstance(v, Token)]
            out.append(or_(*conds) if conds else false())
    return out


def patient_filters(search: Search, default_system: str) -> list[ColumnElement[bool]]:
    where = identifier_filters(search, ["identifier"], default_system)
    for ors in search.values("_id"):
        where.append(Study.patient_key.in_([v.code for v in ors if isinstance(v, Token)]))
    return where


def search_patients(
    *, session: Session, search: Search, default_system: str
) -> tuple[int, list[Study]]:
    """(number of matching patients, the latest study of each patient on the page): two
    queries whatever the page size."""
    where = patient_filters(search, default_system)
    keys = select(Study.patient_key).where(*where).group_by(Study.patient_key)
    total = int(session.scalar(select(func.count()).select_from(keys.subquery())) or 0)
    if not search.count:
        return total, []
    descending = bool(search.sort and search.sort[0][1])
    order = Study.patient_key.desc() if descending else Study.patient_key.asc()
    page = keys.order_by(order).offset(search.offset).limit(search.count).subquery()
    studies = session.scalars(
        select(Study)
        .where(Study.patient_key.in_(select(page.c.patient_key)))
        .order_by(Study.last_received_at.desc(), Study.id.desc())
    ).all()
    latest: dict[str, Study] = {}
    for study in studies:
        latest.setdefault(study.patient_key, study)
    ordered = sorted(latest.values(), key=lambda s: s.patient_key, reverse=descending)
    return total, ordered


def patients_of(*, session: Session, keys: Sequence[str]) -> list[Study]:
    """The latest study of each patient key (one query), in the order of ``keys``."""
    if not keys:
        return []
    latest: dict[str, Study] = {}
    for study in session.scalars(
        select(Study)
        .where(Study.patient_key.in_(set(keys)))
        .order_by(Study.last_received_at.desc(), Study.id.desc())
    ):
        latest.setdefault(study.patient_key, study)
    return [latest[k] for k in dict.fromkeys(keys) if k in latest]


def patient_entries(
    *, session: Session, keys: Sequence[str], default_system: str
) -> list[tuple[str, str, bytes]]:
    """Encoded Patients of ``keys`` (each once), for ``_include=…:subject``."""
    return [
        entry(build_patient(study, default_system).model_dump(mode="json"))
        for study in patients_of(session=session, keys=keys)
    ]
