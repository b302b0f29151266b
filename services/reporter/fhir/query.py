"""Parsed FHIR searches → SQLAlchemy statements (bound parameters only, indexed columns)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, select, true

from services.core.db import Finding, Job, JobState, Study
from services.reporter.fhir import common as fc
from services.reporter.fhir import subset, versioning
from services.reporter.fhir.patient import identifier_filters
from services.reporter.fhir.search import DateRange, Reference, Search, Spec, Token

DONE = JobState.DONE.value
_REF = frozenset({""})
_PATIENT_REF = frozenset({"", "Patient"})
#: chained searches on the subject's MRN, all spelled as ``patient.identifier``
_CHAINS = {
    "subject:Patient.identifier": "patient.identifier",
    "subject.identifier": "patient.identifier",
    "patient:Patient.identifier": "patient.identifier",
}
OBSERVATION_CATEGORY = {"system": fc.OBS_CATEGORY, "code": "imaging", "display": "Imaging"}

REPORT_SPEC = Spec(
    params={
        "patient": ("reference", _PATIENT_REF),
        "subject": ("reference", _PATIENT_REF),
        "identifier": ("token", _REF),
        "based-on": ("reference", frozenset({"", "identifier"})),
        "status": ("token", _REF),
        "date": ("date", _REF),
        "issued": ("date", _REF),
        "_lastUpdated": ("date", _REF),
        "_id": ("token", _REF),
        "patient.identifier": ("token", _REF),
        "category": ("token", _REF),
        "code": ("token", _REF),
    },
    sorts={"date": "date", "issued": "issued", "_lastUpdated": "issued", "_id": "id"},
    includes=frozenset({"DiagnosticReport:result", "DiagnosticReport:subject"}),
    aliases=_CHAINS,
    elements=subset.elements("DiagnosticReport"),
)
OBSERVATION_SPEC = Spec(
    params={
        "patient": ("reference", _PATIENT_REF),
        "subject": ("reference", _PATIENT_REF),
        "code": ("token", _REF),
        "derived-from": ("reference", _REF),
        "_id": ("token", _REF),
        "patient.identifier": ("token", _REF),
        "status": ("token", _REF),
        "date": ("date", _REF),
        "category": ("token", _REF),
        "_lastUpdated": ("date", _REF),
    },
    sorts={"_lastUpdated": "issued", "date": "date"},
    aliases=_CHAINS,
    elements=subset.elements("Observation"),
)
IMAGING_STUDY_SPEC = Spec(
    params={
        "patient": ("reference", _PATIENT_REF),
        "subject": ("reference", _PATIENT_REF),
        "identifier": ("token", _REF),
        "_id": ("token", _REF),
    },
    sorts={"started": "date", "_id": "id"},
    elements=subset.elements("ImagingStudy"),
)


def _any(conditions: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    return or_(*conditions) if conditions else false()


def _patients(search: Search, name: str) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for modifier in ("", "Patient"):
        for ors in search.values(name, modifier):
            keys = [
                v.id
                for v in ors
                if isinstance(v, Reference) and v.resource_type in (None, "Patient")
            ]
            out.append(Study.patient_key.in_(keys) if keys else false())
    return out


def _ids(search: Search, column: Any) -> list[ColumnElement[bool]]:
    return [
        column.in_([v.code for v in ors if isinstance(v, Token)]) for ors in search.values("_id")
    ]


def _study_day(day: datetime) -> str:
    return day.astimezone(UTC).strftime("%Y%m%d")


def date_condition(column: Any, value: DateRange, *, day_string: bool) -> ColumnElement[bool]:
    """FHIR date prefixes against a timestamp, or against a ``YYYYMMDD`` study date."""
    if day_string:
        lo = _study_day(value.lo)
        last_day = _study_day(value.hi - timedelta(microseconds=1))
        cond = {
            "eq": and_(column >= lo, column <= last_day),
            "ne": or_(column < lo, column > last_day),
            "gt": column > last_day,
            "ge": column >= lo,
            "lt": column < lo,
            "le": column <= last_day,
        }[value.prefix]
        return and_(column != "", cond)
    return {
        "eq": and_(column >= value.lo, column < value.hi),
        "ne": or_(column < value.lo, column >= value.hi),
        "gt": column >= value.hi,
        "ge": column >= value.lo,
        "lt": column < value.lo,
        "le": column < value.hi,
    }[value.prefix]


def _dates(search: Search, name: str, column: Any, *, day_string: bool) -> list[Any]:
    return [
        _any(
            [
                date_condition(column, v, day_string=day_string)
                for v in ors
                if isinstance(v, DateRange)
            ]
        )
        for ors in search.values(name)
    ]


def report_status_amended() -> ColumnElement[bool]:
    """The report's version is not its first (``versioning.report_status``)."""
    return Job.report_version > 1


def _report_identifier(token: Token) -> ColumnElement[bool]:
    if token.system == fc.REPORT_SYSTEM:
        return Job.report_id == token.code
    if token.system is None:
        return or_(Job.report_id == token.code, Study.accession_number == token.code)
    if token.system == "":
        return Study.accession_number == token.code
    return false()


def _coded(token: Token, codings: Sequence[dict[str, str]]) -> bool:
    """Whether ``token`` names one of ``codings`` (no system: any system)."""
    return any(
        token.code == c["code"] and (token.system is None or token.system == c["system"])
        for c in codings
    )


def _constant(search: Search, name: str, codings: Sequence[dict[str, str]]) -> list[Any]:
    """``name`` is coded the same on every resource of the type: each AND-ed value matches
    all of them when one of its ORs names one of ``codings``, else none."""
    return [
        true() if any(isinstance(v, Token) and _coded(v, codings) for v in ors) else false()
        for ors in search.values(name)
    ]


def _status_filters(search: Search, rejected: ColumnElement[bool] | None = None) -> list[Any]:
    """``status`` as SQL; ``rejected`` (Observations): findings a radiologist rejected,
    whose current version is ``entered-in-error`` too."""
    where: list[Any] = []
    for ors in search.values("status"):
        conds = []
        live: ColumnElement[bool] = Job.superseded_at.is_(None)  # superseded: retracted
        if rejected is not None:
            live = and_(live, not_(rejected))
        for v in ors:
            if isinstance(v, Token) and v.code == "final":
                conds.append(and_(live, not_(report_status_amended())))
            elif isinstance(v, Token) and v.code == "amended":
                conds.append(and_(live, report_status_amended()))
            elif isinstance(v, Token) and v.code == versioning.RETRACTED:
                retracted = Job.superseded_at.is_not(None)
                conds.append(retracted if rejected is None else or_(retracted, rejected))
        where.append(_any(conds))
    return where


def report_filters(search: Search, mrn_system: str = "") -> list[Any]:
    where: list[Any] = [versioning.current_report()]  # one current version per report
    where += _patients(search, "patient") + _patients(search, "subject")
    where += identifier_filters(search, ["patient.identifier"], mrn_system)
    where += _constant(search, "category", fc.REPORT_CATEGORIES)
    where += _constant(search, "code", [fc.REPORT_CODE])
    where += _ids(search, Job.report_id)
    for ors in search.values("identifier"):
        where.append(_any([_report_identifier(v) for v in ors if isinstance(v, Token)]))
    for ors in search.values("based-on", "identifier"):
        where.append(
            _any(
                [
                    _report_identifier(Token("", v.id)) if isinstance(v, Reference) else false()
                    for v in ors
                ]
            )
        )
    if search.values("based-on"):
        where.append(false())  # no ServiceRequest resources are held here
    where += _status_filters(search)
    where += _dates(search, "date", Study.study_date, day_string=True)
    where += _dates(search, "issued", Job.finished_at, day_string=False)
    where += _dates(search, "_lastUpdated", Job.finished_at, day_string=False)
    return where


_STUDY_PARAMS = {"patient", "subject", "identifier", "based-on", "date", "patient.identifier"}
_ORDER: dict[str, Any] = {
    "date": Study.study_date,
    "issued": Job.finished_at,
    "id": Job.report_id,
}


def report_statement(search: Search, mrn_system: str = "") -> tuple[Any, Any]:
    """(page query of (Job, Study): the current version of each report, count query);
    ``mrn_system`` is the configured MRN system (``patient.identifier``)."""
    where = report_filters(search, mrn_system)
    base = select(Job, Study).join(Study, Job.study_id == Study.id).where(*where)
    count = select(func.count()).select_from(Job)
    if {name for name, _ in search.filters} & _STUDY_PARAMS:  # else no join: index-only count
        count = count.join(Study, Job.study_id == Study.id)
    order: list[Any] = [(_ORDER[c].desc() if d else _ORDER[c].asc()) for c, d in search.sort]
    if not search.sort:
        order = [Job.finished_at.desc()]
    page = base.order_by(*order, Job.id.desc()).offset(search.offset).limit(search.count)
    return page, count.where(*where)


def observation_statement(search: Search, mrn_system: str = "") -> tuple[Any, Any]:
    where: list[Any] = [versioning.published()]  # current and retracted (entered-in-error)
    where += _patients(search, "patient") + _patients(search, "subject")
    where += identifier_filters(search, ["patient.identifier"], mrn_system)
    where += _status_filters(search, versioning.rejected())
    where += _dates(search, "date", Study.study_date, day_string=True)
    updated = versioning.observation_last_updated()
    where += _dates(search, "_lastUpdated", updated, day_string=False)
    where += _constant(search, "category", [OBSERVATION_CATEGORY])
    codes = {coding["code"]: finding_type for finding_type, coding in fc.FINDING_CODES.items()}
    for ors in search.values("code"):
        types = {
            codes[v.code]
            for v in ors
            if isinstance(v, Token) and v.code in codes and v.system in (None, fc.SNOMED)
        }
        where.append(Finding.finding_type.in_(sorted(types)) if types else false())
    for ors in search.values("derived-from"):
        uids = [
            v.id
            for v in ors
            if isinstance(v, Reference) and v.resource_type in (None, "ImagingStudy")
        ]
        where.append(Study.study_instance_uid.in_(uids) if uids else false())
    for ors in search.values("_id"):
        pairs = [fc.parse_observation_id(v.code) for v in ors if isinstance(v, Token)]
        where.append(
            _any([and_(Finding.job_id == p[0], Finding.index == p[1]) for p in pairs if p])
        )
    joined = Finding.__table__.join(Job.__table__, Finding.job_id == Job.id).join(
        Study.__table__, Job.study_id == Study.id
    )
    base = select(Finding, Job, Study).select_from(joined).where(*where)
    count = select(func.count()).select_from(joined).where(*where)
    order = [
        (Job.finished_at.desc() if d else Job.finished_at.asc())
        if c == "issued"
        else (Study.study_date.desc() if d else Study.study_date.asc())
        for c, d in search.sort
    ] or [Job.finished_at.desc()]
    page = base.order_by(*order, Job.id, Finding.index).offset(search.offset).limit(search.count)
    return page, count


def _study_identifier(token: Token) -> ColumnElement[bool]:
    if token.system not in (None, fc.DICOM_UID_SYSTEM):
        return false()
    return Study.study_instance_uid == token.code.removeprefix("urn:oid:")


def imaging_study_statement(search: Search) -> tuple[Any, Any]:
    where: list[Any] = _patients(search, "patient") + _patients(search, "subject")
    where += _ids(search, Study.study_instance_uid)
    for ors in search.values("identifier"):
        where.append(_any([_study_identifier(v) for v in ors if isinstance(v, Token)]))
    base = select(Study).where(*where)
    count = select(func.count()).select_from(Study).where(*where)
    order: list[Any] = [
        (
            (Study.study_date if c == "date" else Study.study_instance_uid).desc()
            if d
            else (Study.study_date if c == "date" else Study.study_instance_uid).asc()
        )
        for c, d in search.sort
    ] or [Study.last_received_at.desc()]
    page = base.order_by(*order, Study.id.desc()).offset(search.offset).limit(search.count)
    return page, count
