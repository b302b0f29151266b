from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from services.core.settings import Settings
from services.receiver.policy import rejection_reason, tls_context
from services.receiver.prefork import process_count


def test_rejection_reasons() -> None:
    common: dict[str, Any] = {"ae_title": "NODULEFLOW", "allowed_aets": ["PACS"]}
    assert rejection_reason(calling_aet="PACS", called_aet="WRONG", **common) == (
        "called-ae-title-not-recognized"
    )
    assert rejection_reason(calling_aet="EVIL", called_aet="NODULEFLOW", **common) == (
        "calling-ae-title-not-recognized"
    )
    assert rejection_reason(calling_aet="PACS", called_aet="NODULEFLOW", **common) == (
        "local-limit-exceeded"
    )


def test_process_count() -> None:
    assert process_count(Settings(receiver_processes=3), cpus=16) == 3
    assert process_count(Settings(receiver_processes=0), cpus=16) == 4
    assert process_count(Settings(receiver_processes=0), cpus=2) == 2


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "noduleflow-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_context(tmp_path: Path) -> None:
    assert tls_context(None, None, None) is None
    cert, key = _self_signed(tmp_path)
    server = tls_context(cert, key, None)
    assert server is not None
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_NONE
    mutual = tls_context(cert, key, cert)
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
