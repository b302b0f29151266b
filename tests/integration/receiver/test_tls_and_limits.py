"""DICOM TLS (S4), association limits and malformed input (S5)."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.core.broker import InProcessBroker
from services.core.db import Database
from tests.factories.pki import make_pki
from tests.integration.receiver.harness import receiver_settings, running_receiver, wait_for

pytestmark = pytest.mark.integration


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    tls = (context, "127.0.0.1") if context is not None else None
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW", tls_args=tls)
    except (OSError, ssl.SSLError):
        return False
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status.Status == 0)


def _client(pki: dict[str, Path], *, cert: bool, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.pem"]))
    context.minimum_version = context.maximum_version = version
    if cert:
        context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    return context


def test_mutual_tls(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = receiver_settings(
        tmp_path,
        sqlite_url,
        dicom_tls_cert=pki["server.pem"],
        dicom_tls_key=pki["server.key"],
        dicom_tls_ca=pki["ca.pem"],
    )
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        port = receiver.port
        assert _echo(port, _client(pki, cert=True, version=ssl.TLSVersion.TLSv1_3))
        assert _echo(port, _client(pki, cert=True, version=ssl.TLSVersion.TLSv1_2))
        assert not _echo(port, _client(pki, cert=False, version=ssl.TLSVersion.TLSv1_3))
        assert not _echo(port, None)  # plain TCP to the TLS port
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                old.wrap_socket(raw, server_hostname="127.0.0.1").do_handshake()
        assert _echo(port, _client(pki, cert=True, version=ssl.TLSVersion.TLSv1_3))  # alive


def test_association_limit_and_garbage(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    settings = receiver_settings(tmp_path, sqlite_url, max_associations=3)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        port = receiver.port
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", port, ae_title="NODULEFLOW") for _ in range(3)]
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        assert rj is not None
        assert (rj.result_source, rj.diagnostic) == (0x03, 0x02)  # local limit exceeded
        wrong = ae.associate("127.0.0.1", port, ae_title="WRONG")  # takes no slot either
        assert wrong.is_rejected and wrong.acceptor.primitive is not None
        assert wrong.acceptor.primitive.diagnostic == 0x07  # called AE title not recognised
        for assoc in held:
            assoc.release()
        server = receiver.scp.server
        assert server is not None
        assert wait_for(lambda: not server.active_associations, timeout=10)
        # An unknown PDU type, and a PDU claiming 4 GiB: closed without allocating it. Each
        # holds a slot until the ACSE timeout; the third slot still serves a legitimate peer.
        for payload in (b"\x09" + b"\x00" * 9, b"\x01\x00\xff\xff\xff\xff" + b"x" * 10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(payload)
        assert _echo(port, None)
        assert receiver.scp.server is not None


def test_silent_tls_peers_do_not_stall_the_listener(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    """A TLS handshake happens in the connection's own thread within the ACSE timeout: peers
    that connect and never send a ClientHello neither block the accepting thread nor stay."""
    pki = make_pki(tmp_path / "pki")
    settings = receiver_settings(
        tmp_path,
        sqlite_url,
        dicom_tls_cert=pki["server.pem"],
        dicom_tls_key=pki["server.key"],
        dicom_tls_ca=pki["ca.pem"],
        acse_timeout_seconds=2.0,
    )
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        port = receiver.port
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            assert _echo(port, _client(pki, cert=True, version=ssl.TLSVersion.TLSv1_3))
            assert time.monotonic() - started < 2.0
            for sock in silent:  # ended by the receiver after the ACSE timeout
                sock.settimeout(5)
                assert sock.recv(1) == b""
        finally:
            for sock in silent:
                sock.close()
