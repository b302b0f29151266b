"""Idle and half-open connections cannot lock senders out of ``noduleflow receiver``.

A connection that never finishes association negotiation holds no association slot: it is
counted apart (pending), capped per source address and ended after
``NODULEFLOW_ACSE_TIMEOUT_SECONDS`` (5 s). Raw sockets stand in for the attacker; the real
receiver runs with its defaults (2 SCP processes × 16 associations)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.factories.dicom import ct_slice
from tests.integration.receiver.harness import echo_ok, receiver_process, wait_for
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACSE_TIMEOUT = 5.0  # the default of NODULEFLOW_ACSE_TIMEOUT_SECONDS
#: Source addresses of the idle peers: the sender's own address, and another one.
SOURCES = ("127.0.0.1", "127.0.0.2")


def _hold(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing, or (every fifth) only the first two bytes
    of an A-ASSOCIATE-RQ header, and then wait."""
    held = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.bind((SOURCES[i % 2], 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            if i % 5 == 4:
                sock.sendall(b"\x01\x00")
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def _echo_and_store(port: int) -> tuple[float, float]:
    """Seconds a new association took for a C-ECHO, and another for a C-STORE (0x0000)."""
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established, "echo association refused"
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    echoed = time.monotonic() - started
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established, "store association refused"
    ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=0, rows=32, cols=32)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return echoed, time.monotonic() - started


def _closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("idle", [40, 200])
def test_idle_connections_do_not_lock_out_senders(
    tmp_path: Path, sqlite_url: str, idle: int
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": sqlite_url,
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "2",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    for name in ("ACSE_TIMEOUT_SECONDS", "MAX_ASSOCIATIONS", "MAX_CONNECTIONS_PER_PEER"):
        env.pop(f"NODULEFLOW_{name}", None)  # the defaults
    log = tmp_path / "receiver.log"
    with receiver_process(env, log):
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        opened = time.monotonic()
        held = _hold(port, idle)
        try:
            assert len(held) >= 40
            time.sleep(0.5)  # all accepted by now: the slots they could take are taken
            echoed, stored = _echo_and_store(port)
            assert time.monotonic() - opened < ACSE_TIMEOUT  # still held while we sent
            assert echoed < 2.0 and stored < 2.0, (echoed, stored, log.read_text()[-3000:])
            # None is kept: each is refused, or ended once the ACSE timeout has passed.
            deadline = opened + ACSE_TIMEOUT + 3.0
            still_open = [s for s in held if not _closed_by_peer(s, deadline)]
            assert still_open == [], f"{len(still_open)} idle connections still open"
        finally:
            for sock in held:
                sock.close()
        assert echo_ok(port)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
