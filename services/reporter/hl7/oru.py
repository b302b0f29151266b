"""The ORU^R01 (unsolicited observation result, HL7 v2.5.1 ch. 7) of one finished analysis.

Built with hl7apy on the ``ORU_R01`` structure and validated by it::

    MSH  sending/receiving application and facility (settings), ORU^R01^ORU_R01, 2.5.1
    PID  PID-3 Patient ID (MR) with its assigning authority (CX-4: Issuer of Patient ID and
         the MRN system, as the FHIR Patient's identifier), PID-5 name, PID-7 birth date,
         PID-8 sex: from the DICOM header
    ORC  RE (observations to follow), ORC-2/OBR-2 placer = accession, ORC-3/OBR-3 filler = job
    OBR  OBR-4 LOINC 24627-2 "CT Chest", OBR-7 study date, OBR-18 accession (IHE Placer
         Field 1), OBR-20 Study Instance UID, OBR-22 when reported, OBR-24 CT, OBR-25 F or C
    OBX  Study Instance UID (DCM 110180), the study's highest Lung-RADS category, per finding
         (OBX-4 sub-ID = finding number) its kind, diameter, volume, attenuation and
         Lung-RADS, then the text summary (LOINC 19005-8 "Radiology Imaging study
         [Impression] (narrative)")

Lung-RADS and the nodule kind use the SR's standard codes (``dicom.codes``): RadLex first,
its SNOMED CT equivalent as the CE/CWE alternate (components 4-6); RadLex is ``RADLEX``, the
HL7 OID registry's symbolic name (2.16.840.1.113883.6.256), as in DICOM PS3.16.

A re-analysis that replaces an earlier report is a corrected result: OBR-25 and every
OBX-11 are ``C`` instead of ``F``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.core import Group, Message, Segment

from services.core.contracts import Finding
from services.core.settings import Settings
from services.reporter.dicom import codes as nf
from services.reporter.dicom.codes import PRIVATE_SCHEME, Triplet
from services.reporter.fhir.common import highest_lung_rads
from services.reporter.hl7.identity import patient_identifier
from services.reporter.hl7.text import components, escape

VERSION = "2.5.1"
FINAL, CORRECTED = "F", "C"
# Codes as (code, coding system, text), the order of ``dicom.codes.Triplet``; :func:`cwe`
# writes them in HL7's order (identifier^text^coding system).
REPORT_CODE = ("24627-2", "LN", "CT Chest")
STUDY_UID_CODE = ("110180", "DCM", "Study Instance UID")
# LOINC 19005-8, checked against the LOINC names used by US Core, the IPS and the EU imaging
# report guides (DICOM PS3.20 codes the Impression section with it too)
SUMMARY_CODE = ("19005-8", "LN", "Radiology Imaging study [Impression] (narrative)")
LUNG_RADS_CODE = nf.LUNG_RADS_NAME
FINDING_CODE = ("121071", "DCM", "Finding")
KIND_CODE = nf.SOLIDNESS_NAME
DIAMETER_CODE = ("81827009", "SCT", "Diameter")
VOLUME_CODE = ("118565006", "SCT", "Volume")
ATTENUATION_CODE = ("112031", "DCM", "Attenuation Coefficient")
CONFIDENCE_CODE = ("confidence", PRIVATE_SCHEME, "Detection confidence")
FINDING_TYPES = {"nodule": ("27925004", "SCT", "Nodule"), "mass": ("4147007", "SCT", "Mass")}
UNITS = {"mm": ("mm", "millimeter"), "mm3": ("mm3", "cubic millimeter"), "HU": ("[hnsf'U]", "HU")}
SEXES = {"M": "M", "F": "F", "O": "O"}  # DICOM (0010,0040) → HL7 table 0001; else U


@dataclass(frozen=True)
class Endpoints:
    """MSH-3..6."""

    sending_application: str = "NODULEFLOW"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        return cls(
            settings.hl7_sending_application,
            settings.hl7_sending_facility,
            settings.hl7_receiving_application,
            settings.hl7_receiving_facility,
        )


@dataclass(frozen=True)
class OruInput:
    """What one ORU^R01 is built from (read from the job, its study and findings)."""

    job_id: str
    patient_id: str
    patient_name: str  # DICOM PN
    birth_date: str  # DICOM DA
    sex: str  # DICOM CS
    accession_number: str
    study_instance_uid: str
    study_date: str
    study_time: str
    reported_at: datetime
    findings: Sequence[Finding]
    corrected: bool = False
    model: str = ""
    patient_id_issuer: str = ""  # Issuer of Patient ID (0010,0021)
    mrn_system: str = ""  # the MRN's identifier system (fhir.patient.mrn_system)

    def __post_init__(self) -> None:
        if not self.study_instance_uid:
            raise ValueError("an ORU^R01 needs the Study Instance UID")


def control_id(job_id: str) -> str:
    """MSH-10: the same for every attempt of one job (so a receiver can drop a duplicate);
    20 characters, the limit of ST in MSH-10."""
    return job_id.replace("-", "")[:20]


def summary(data: OruInput) -> str:
    """The text summary (OBX TX)."""
    by = f" by {data.model}" if data.model else ""
    tail = f"Automated analysis{by}; to be confirmed by a radiologist."
    if data.corrected:
        tail = "Corrected result: replaces the earlier report of this study. " + tail
    if not data.findings:
        return f"No lung nodules detected. Lung-RADS 1. {tail}"
    largest = max(data.findings, key=lambda f: f.diameter_mm)
    category = highest_lung_rads([f.lung_rads for f in data.findings])
    return (
        f"{len(data.findings)} finding(s); largest {largest.diameter_mm:.1f} mm "
        f"{largest.finding_type} ({largest.kind}). Highest Lung-RADS category {category}. {tail}"
    )


def _hl7_name(dicom_pn: str) -> str:
    """DICOM family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix."""
    parts = (dicom_pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return components(family, given, middle, suffix, prefix)


def _datetime(date: str, time: str = "") -> str:
    digits = "".join(c for c in time.split(".")[0] if c.isdigit())[:6]
    return f"{date}{digits}" if date.isdigit() and len(date) == 8 else ""


class _Results:
    """Appends OBX segments to one ORDER_OBSERVATION group, numbering OBX-1."""

    def __init__(self, order: Group, status: str, observed: str) -> None:
        self.order, self.status, self.observed, self.count = order, status, observed, 0

    def add(
        self,
        value_type: str,
        code: Sequence[Triplet],
        value: str,
        *,
        sub_id: str = "",
        units: str = "",
    ) -> Segment:
        self.count += 1
        obx = self.order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(self.count)
        obx.obx_2 = value_type
        obx.obx_3 = cwe(code)
        if sub_id:
            obx.obx_4 = sub_id
        obx.obx_5 = value
        if units:
            code_, text = UNITS[units]
            obx.obx_6 = components(code_, text, "UCUM")
        obx.obx_11 = self.status
        if self.observed:
            obx.obx_14 = self.observed
        return obx

    def number(self, code: Triplet, value: float, units: str, sub_id: str) -> None:
        self.add("NM", (code,), f"{value:.1f}", sub_id=sub_id, units=units)

    def coded(self, code: Sequence[Triplet], value: Sequence[Triplet], sub: str) -> None:
        self.add("CWE", code, cwe(value), sub_id=sub)


def cwe(codes: Sequence[Triplet]) -> str:
    """A CE/CWE value: the primary code, then its first equivalent as the alternate
    identifier, text and coding system (components 4-6)."""
    if not codes:
        raise ValueError("a coded value needs at least one code")
    return components(
        *(part for value, scheme, text in codes[:2] for part in (value, text, scheme))
    )


def lung_rads_value(category: str) -> tuple[Triplet, ...]:
    """The coded Lung-RADS category; an unknown one keeps its text under the private scheme."""
    try:
        return nf.lung_rads_codes(category)
    except ValueError:
        return ((category, PRIVATE_SCHEME, f"Lung-RADS {category}"),)


def kind_value(kind: str) -> tuple[Triplet, ...]:
    """The coded nodule kind (solidness); an unknown one under the private scheme."""
    try:
        return nf.solidness_codes(kind)
    except ValueError:
        return ((kind, PRIVATE_SCHEME, kind),)


def build_oru(data: OruInput, endpoints: Endpoints, *, now: datetime | None = None) -> Message:
    """The ORU^R01 message for ``data`` (hl7apy validates the structure)."""
    status = CORRECTED if data.corrected else FINAL
    message = Message("ORU_R01", version=VERSION, validation_level=2)
    msh = message.msh
    msh.msh_3 = escape(endpoints.sending_application)
    msh.msh_4 = escape(endpoints.sending_facility)
    msh.msh_5 = escape(endpoints.receiving_application)
    msh.msh_6 = escape(endpoints.receiving_facility)
    msh.msh_7 = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(data.job_id)
    msh.msh_11 = "P"
    msh.msh_18 = "UNICODE UTF-8"

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
    pid.pid_1 = "1"
    pid.pid_3 = patient_identifier(data.patient_id, data.patient_id_issuer, data.mrn_system)
    pid.pid_5 = _hl7_name(data.patient_name) or '""'  # required; "" is HL7's explicit null
    if _datetime(data.birth_date):
        pid.pid_7 = data.birth_date
    pid.pid_8 = SEXES.get(data.sex.strip().upper(), "U")

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"
    if data.accession_number:
        orc.orc_2 = components(data.accession_number)
    orc.orc_3 = components(data.job_id, endpoints.sending_application)
    orc.orc_5 = "CM"
    observed = _datetime(data.study_date, data.study_time)
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if data.accession_number:
        obr.obr_2 = components(data.accession_number)
        obr.obr_18 = escape(data.accession_number)
    obr.obr_3 = components(data.job_id, endpoints.sending_application)
    obr.obr_4 = cwe((REPORT_CODE,))
    if observed:
        obr.obr_7 = observed
    obr.obr_20 = escape(data.study_instance_uid)
    obr.obr_22 = data.reported_at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    obr.obr_24 = "CT"
    obr.obr_25 = status

    results = _Results(order, status, observed)
    results.add("ST", (STUDY_UID_CODE,), escape(data.study_instance_uid))
    category = highest_lung_rads([f.lung_rads for f in data.findings]) if data.findings else "1"
    results.coded(LUNG_RADS_CODE, lung_rads_value(category), "")
    for number, finding in enumerate(data.findings, start=1):
        sub = str(number)
        kind = FINDING_TYPES.get(finding.finding_type, FINDING_TYPES["nodule"])
        results.coded((FINDING_CODE,), (kind,), sub)
        results.coded(KIND_CODE, kind_value(finding.kind), sub)
        results.number(DIAMETER_CODE, finding.diameter_mm, "mm", sub)
        results.number(VOLUME_CODE, finding.volume_mm3, "mm3", sub)
        results.number(ATTENUATION_CODE, finding.mean_hu, "HU", sub)
        results.coded(LUNG_RADS_CODE, lung_rads_value(finding.lung_rads), sub)
        results.add("NM", (CONFIDENCE_CODE,), f"{finding.confidence:.2f}", sub_id=sub)
    results.add("TX", (SUMMARY_CODE,), escape(summary(data)))
    message.validate()
    return message
