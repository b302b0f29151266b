from __future__ import annotations

import queue
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from services.receiver.fast import wakeups
from services.receiver.fast.fastpath import MAX_PDU_READ, _recv


def test_dul_waiter_wakes_on_socket_data_and_on_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeups, "MAX_WAIT", 10.0)
    ours, peer = socket.socketpair()
    provider = SimpleNamespace(
        socket=SimpleNamespace(socket=ours),
        to_provider_queue=queue.Queue(),
        kill_dul=lambda: None,
    )
    waiter = wakeups._DulWaiter(provider)
    try:
        threading.Timer(0.01, lambda: peer.sendall(b"x")).start()
        start = time.monotonic()
        waiter(0.001)
        assert time.monotonic() - start < 5.0
        assert ours.recv(1) == b"x"
        threading.Timer(0.01, lambda: provider.to_provider_queue.put("pdu")).start()
        start = time.monotonic()
        waiter(0.001)
        assert time.monotonic() - start < 5.0
    finally:
        waiter.close()
        ours.close()
        peer.close()


def test_recv_refuses_implausible_pdu_length() -> None:
    ours, peer = socket.socketpair()
    try:
        holder = SimpleNamespace(socket=ours)
        assert _recv(holder, MAX_PDU_READ + 1) == bytearray()  # nothing allocated or read
        peer.sendall(b"abcdef")
        assert _recv(holder, 6) == bytearray(b"abcdef")
        peer.close()
        assert _recv(holder, 4) == bytearray()  # peer gone: short read
    finally:
        ours.close()
