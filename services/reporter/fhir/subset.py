"""``_elements``: which top-level elements a resource type has, and a resource cut down to some.

Element names come from the fhir.resources model (``elements_sequence``); a choice element
(``effective[x]``) is named by its base (``effective``), as FHIR search does. A subsetted
resource keeps ``resourceType``, ``id``, ``meta`` and its mandatory elements, and is tagged
``SUBSETTED`` (FHIR R4 §3.1.1.5.9).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from importlib import import_module
from typing import Any

V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED = {"system": V3_OBSERVATION_VALUE, "code": "SUBSETTED", "display": "subsetted"}
_ALWAYS = ("resourceType", "id", "meta")
#: mandatory (1..1) top-level elements, returned whether asked for or not
MANDATORY = {
    "DiagnosticReport": ("status", "code"),
    "Observation": ("status", "code"),
    "ImagingStudy": ("status", "subject"),
    "Patient": (),
}
_CHOICE = re.compile(
    r"^([a-z][A-Za-z]*?)(DateTime|Period|Quantity|CodeableConcept|String|Boolean|Integer|"
    r"Range|Ratio|SampledData|Time|Instant|Timing|Reference|Date|Age|Attachment)$"
)
_NOT_ELEMENTS = {"implicitRules", "contained", "extension", "modifierExtension"}


@cache
def _public_names(resource_type: str) -> dict[str, str]:
    """Element name → the name ``_elements`` uses (a choice element's base, e.g.
    ``effectiveDateTime`` → ``effective``; a base is one with several typed variants)."""
    module = import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    names = [
        n for n in getattr(module, resource_type).elements_sequence() if n not in _NOT_ELEMENTS
    ]
    bases = {n: m.group(1) for n in names if (m := _CHOICE.match(n))}
    counts = Counter(bases.values())
    return {n: bases[n] if counts.get(bases.get(n, ""), 0) > 1 else n for n in names}


def elements(resource_type: str) -> frozenset[str]:
    """The element names ``_elements`` accepts for ``resource_type``."""
    return frozenset(_public_names(resource_type).values())


def subset(body: bytes, wanted: list[str]) -> bytes:
    """``body`` (an encoded resource) with only the ``wanted`` elements (and those always
    kept), tagged SUBSETTED."""
    resource: dict[str, Any] = json.loads(body)
    rtype = str(resource.get("resourceType", ""))
    public = _public_names(rtype)
    keep = set(wanted) | set(_ALWAYS) | set(MANDATORY.get(rtype, ()))
    out = {k: v for k, v in resource.items() if public.get(k, k) in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()
