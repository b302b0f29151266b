"""PID-3: the MRN as a CX with its assigning authority (HL7 v2.5.1 §2.A.14 CX, §2.A.33 HD).

The same identity as the FHIR Patient (``fhir.patient``): the MRN's system is the study's
Issuer of Patient ID (0010,0021) when that is a URI or an OID, else
``NODULEFLOW_MRN_SYSTEM``; a local-name issuer is kept as text. In the CX that becomes:

- CX-4.1 namespace ID: a local-name Issuer of Patient ID (e.g. ``HOSP-A``);
- CX-4.2 universal ID and CX-4.3 its type (HL7 table 0301): an ``urn:oid:`` system as the
  bare OID with ``ISO``, any other URI as itself with ``URI``;
- CX-5 identifier type ``MR``.

With neither an issuer nor a system, CX-4 is empty, as before.
"""

from __future__ import annotations

from services.core.db.models import issuer_system
from services.reporter.hl7.text import escape


def assigning_authority(issuer: str, system: str) -> str:
    """The HD of an MRN (subcomponents joined by ``&``, each escaped; "" when unknown)."""
    local = issuer.strip() if not issuer_system(issuer) else ""
    if system.startswith("urn:oid:"):
        universal, kind = system.removeprefix("urn:oid:"), "ISO"
    elif system:
        universal, kind = system, "URI"
    else:
        universal, kind = "", ""
    parts = [escape(local), escape(universal), kind]
    while parts and not parts[-1]:
        parts.pop()
    return "&".join(parts)


def patient_identifier(patient_id: str, issuer: str = "", system: str = "") -> str:
    """PID-3 (one CX): ``id^^^authority^MR``."""
    return "^".join([escape(patient_id), "", "", assigning_authority(issuer, system), "MR"])
