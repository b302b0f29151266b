"""Coded concepts used in our SR, SEG and key images (PS3.16 codes plus one private scheme).

Values that no standard code set covers (our nodule kinds, Lung-RADS categories) use a
private coding scheme, declared in each document's Coding Scheme Identification Sequence
(PS3.3 C.12.1.1.4; designators starting with ``99`` are private, PS3.16 §8.1).
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99NDLFLW"
PRIVATE_SCHEME_NAME = "noduleflow codes"
MANUFACTURER = "noduleflow"

NODULE = codes.SCT.Nodule  # 27925004
MASS = codes.SCT.Mass  # 4147007: findings over 30 mm (``finding_type`` "mass")
LUNG = codes.SCT.Lung  # 39607008
ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
CT_PROCEDURE = codes.SCT.ComputedTomography  # 77477000
CENTER = codes.DCM.Center  # 111010
LONG_AXIS = codes.SCT.LongAxis
SHORT_AXIS = codes.SCT.ShortAxis
DIAMETER = codes.SCT.Diameter
VOLUME = codes.SCT.Volume
ATTENUATION = codes.DCM.AttenuationCoefficient
MEAN = codes.SCT.Mean
ABSENT = codes.SCT.Absent  # 272519000
MM = codes.UCUM.Millimeter
MM3 = codes.UCUM.CubicMillimeter
HU = codes.UCUM.HounsfieldUnit
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
FINDING = codes.DCM.Finding  # 121071

NODULE_TYPE = CodedConcept("nodule-type", PRIVATE_SCHEME, "Nodule type")
LUNG_RADS = CodedConcept("lung-rads", PRIVATE_SCHEME, "Lung-RADS category")
CONFIDENCE = CodedConcept("confidence", PRIVATE_SCHEME, "Detection confidence")
NO_UNITS = codes.UCUM.NoUnits

_KINDS = {
    "solid": "Solid",
    "part-solid": "Part-solid",
    "ground-glass": "Ground-glass",
}
LUNG_RADS_CATEGORIES = ("0", "1", "2", "3", "4A", "4B", "4X", "S")


def finding_concept(finding_type: str) -> CodedConcept:
    """The finding's concept: Nodule (SCT 27925004) or, for a mass, Mass (SCT 4147007)."""
    return MASS if finding_type == "mass" else NODULE


def nodule_kind(kind: str) -> CodedConcept:
    """The coded nodule kind (solid | part-solid | ground-glass)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown nodule kind {kind!r}")
    return CodedConcept(kind, PRIVATE_SCHEME, _KINDS[kind])


def lung_rads_category(category: str) -> CodedConcept:
    """The coded Lung-RADS category (ACR Lung-RADS v2022)."""
    value = category.strip().upper()
    if value not in LUNG_RADS_CATEGORIES:
        raise ValueError(f"unknown Lung-RADS category {category!r}")
    return CodedConcept(value, PRIVATE_SCHEME, f"Lung-RADS {value}")


def coding_scheme_identification() -> list[Dataset]:
    """Items of the Coding Scheme Identification Sequence declaring our private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return [item]
