"""Coded concepts used in our SR, SEG and key images, and in the HL7 ORU.

Standard codes first: PS3.16 (DCM, SCT, UCUM) and RadLex (designator ``RADLEX``, PS3.16
Table 8-1; OID 2.16.840.1.113883.6.256). DICOM codes RADS assessment values with RadLex
(the PI-RADS context groups, CID 6328-6332), so Lung-RADS and nodule solidness do too; a
SNOMED CT equivalent, where one exists, rides along in the Equivalent Code Sequence
(0008,0121) of the same item (PS3.3 Table 8.8-1). A private scheme (PS3.16 §8.1: ``99``
designators) is kept only for what no standard covers: Lung-RADS ``S`` and the detection
confidence. Both schemes are declared in the Coding Scheme Identification Sequence (PS3.3
C.12.1.1.4). docs/dicom-conformance.md §9 lists each code and where it was checked.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from services.core.identity import MANUFACTURER as MANUFACTURER  # re-exported

PRIVATE_SCHEME = "99NDLFLW"
PRIVATE_SCHEME_NAME = "noduleflow codes"
RADLEX = "RADLEX"
RADLEX_UID = "2.16.840.1.113883.6.256"
SCT = "SCT"

#: (code value, coding scheme designator, code meaning); the first of a tuple is the
#: primary code, the others its equivalents
Triplet = tuple[str, str, str]

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

CONFIDENCE = CodedConcept("confidence", PRIVATE_SCHEME, "Detection confidence")
NO_UNITS = codes.UCUM.NoUnits

#: the Lung-RADS assessment (concept name): RadLex, and the SNOMED CT observable entity
LUNG_RADS_NAME: tuple[Triplet, ...] = (
    ("RID50134", RADLEX, "Lung-RADS assessment"),
    ("1362105002", SCT, "Lung Imaging Reporting and Data System category"),
)
#: nodule attenuation (our ``kind``) as the RadLex solidness descriptor (concept name)
SOLIDNESS_NAME: tuple[Triplet, ...] = (("RID46010", RADLEX, "Solidness descriptor"),)
_SOLIDNESS: dict[str, tuple[Triplet, ...]] = {
    "solid": (("RID5741", RADLEX, "solid"), ("35702001", SCT, "Solid")),
    "part-solid": (("RID46011", RADLEX, "partially solid"),),
    "ground-glass": (
        ("RID46016", RADLEX, "non-solid"),
        ("1217294009", SCT, "Ground glass opacity"),
    ),
}
_LUNG_RADS_RADLEX = {
    "0": "RID50135",
    "1": "RID50136",
    "2": "RID50137",
    "3": "RID50138",
    "4A": "RID50139",
    "4B": "RID50140",
    "4X": "RID50141",
}
LUNG_RADS_CATEGORIES = ("0", "1", "2", "3", "4A", "4B", "4X", "S")


def finding_concept(finding_type: str) -> CodedConcept:
    """The finding's concept: Nodule (SCT 27925004) or, for a mass, Mass (SCT 4147007)."""
    return MASS if finding_type == "mass" else NODULE


def solidness_codes(kind: str) -> tuple[Triplet, ...]:
    """The codes of a nodule kind (solid | part-solid | ground-glass), RadLex first."""
    if kind not in _SOLIDNESS:
        raise ValueError(f"unknown nodule kind {kind!r}")
    return _SOLIDNESS[kind]


def lung_rads_codes(category: str) -> tuple[Triplet, ...]:
    """The code of a Lung-RADS category (ACR Lung-RADS v2022): RadLex, or for ``S`` (no
    standard code found) the private one."""
    value = category.strip().upper()
    if value not in LUNG_RADS_CATEGORIES:
        raise ValueError(f"unknown Lung-RADS category {category!r}")
    meaning = f"Lung-RADS {value}"
    radlex = _LUNG_RADS_RADLEX.get(value)
    return ((radlex, RADLEX, meaning),) if radlex else ((value, PRIVATE_SCHEME, meaning),)


def lung_rads_category_of(code_value: str, scheme: str) -> str | None:
    """The category a Lung-RADS code stands for (the inverse of :func:`lung_rads_codes`)."""
    for category in LUNG_RADS_CATEGORIES:
        if lung_rads_codes(category)[0][:2] == (code_value, scheme):
            return category
    return None


def concept(triplets: tuple[Triplet, ...]) -> CodedConcept:
    """A coded concept from its primary code, the others in its Equivalent Code Sequence."""
    if not triplets:
        raise ValueError("a coded concept needs at least one code")
    (value, scheme, meaning), *equivalents = triplets
    coded = CodedConcept(value, scheme, meaning)
    if equivalents:
        coded.EquivalentCodeSequence = [_basic_code(*t) for t in equivalents]
    return coded


def _basic_code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()  # Basic Code Sequence Macro (PS3.3 Table 8.8-1b)
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def nodule_kind(kind: str) -> CodedConcept:
    """The coded nodule kind (:func:`solidness_codes`)."""
    return concept(solidness_codes(kind))


def lung_rads_category(category: str) -> CodedConcept:
    """The coded Lung-RADS category (:func:`lung_rads_codes`)."""
    return concept(lung_rads_codes(category))


def coding_scheme_identification() -> list[Dataset]:
    """Items of the Coding Scheme Identification Sequence: RadLex and our private scheme."""
    radlex = Dataset()
    radlex.CodingSchemeDesignator = RADLEX
    radlex.CodingSchemeUID = RADLEX_UID
    radlex.CodingSchemeName = "RadLex"
    radlex.CodingSchemeResponsibleOrganization = "RSNA"
    private = Dataset()
    private.CodingSchemeDesignator = PRIVATE_SCHEME
    private.CodingSchemeName = PRIVATE_SCHEME_NAME
    private.CodingSchemeResponsibleOrganization = MANUFACTURER
    return [radlex, private]
