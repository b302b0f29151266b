"""Association policy (pure): which transfer syntaxes we accept, why an association was
refused, and the TLS context of DICOM TLS (PS3.15 B.9/B.13)."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydicom import uid

#: Stored as received (no transcoding); only CT is analysed later (PS3.5 §10).
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
]

#: PS3.8 9.3.4: A-ASSOCIATE-RJ reason/diag values for source "service user" (1) / "service
#: provider, presentation" (3).
REJECT_REASONS: dict[tuple[int, int], str] = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-ae-title-not-recognized",
    (1, 7): "called-ae-title-not-recognized",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def rejection_reason(
    *, calling_aet: str, called_aet: str, ae_title: str, allowed_aets: list[str]
) -> str:
    """The reason pynetdicom's ACSE gave for a rejection, reconstructed from our policy."""
    if called_aet.strip() != ae_title.strip():
        return REJECT_REASONS[(1, 7)]
    if allowed_aets and calling_aet.strip() not in allowed_aets:
        return REJECT_REASONS[(1, 3)]
    return REJECT_REASONS[(3, 2)]


#: TLS 1.2 suites of BCP 195 as profiled by PS3.15 B.13 (TLS 1.3 suites are all AEAD).
TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" + (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)


def tls_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """Server context for DICOM TLS, or None when no certificate is configured.

    TLS 1.2 or newer only; with ``ca`` set, clients must present a certificate signed by it.
    """
    if cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(str(cert), str(key) if key else None)
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca))
    return context
