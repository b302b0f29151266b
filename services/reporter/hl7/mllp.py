"""MLLP (HL7 v2 Minimal Lower Layer Protocol, release 2): one message out, one reply back.

A block is ``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D). The reader collects a reply from any
number of partial reads and trusts the peer with nothing: a reply must start with VT, end
with FS CR, fit in ``max_reply`` bytes and arrive within one deadline for the whole
exchange; anything else is an :class:`MllpError` (a transient delivery error), never a hang
or unbounded memory.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from services.core.errors import TransientError

START, END = b"\x0b", b"\x1c\x0d"
MAX_REPLY = 64 * 1024  # an ACK is a few hundred bytes


class MllpError(TransientError):
    """The exchange failed; ``status`` is what the delivery row records."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message, code=f"mllp-{status}")
        self.status = status


@dataclass(frozen=True)
class Peer:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Peer:
        """``host:port`` (``[v6]:port`` for IPv6)."""
        host, _, port = value.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"HL7 peer must look like host:port, got {value!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def frame(payload: bytes) -> bytes:
    """One MLLP block; a payload holding the framing bytes is refused."""
    if START in payload or b"\x1c" in payload:
        raise ValueError("HL7 payload must not contain MLLP framing bytes")
    return START + payload + END


class ReplyReader:
    """Accumulates received bytes until one whole block (pure, fed by :func:`exchange`)."""

    def __init__(self, max_reply: int = MAX_REPLY) -> None:
        self.max_reply = max_reply
        self.buffer = bytearray()

    def feed(self, chunk: bytes) -> bytes | None:
        """The payload once the block is complete; MllpError for a garbled or huge reply."""
        self.buffer += chunk
        if self.buffer[:1] and self.buffer[:1] != START:
            raise MllpError("reply does not start with an MLLP block", status="bad-frame")
        end = self.buffer.find(END)
        if end >= 0:
            return bytes(self.buffer[1:end])
        if len(self.buffer) > self.max_reply:
            raise MllpError(f"reply larger than {self.max_reply} bytes", status="too-large")
        return None


def exchange(
    peer: Peer,
    payload: bytes,
    *,
    timeout: float,
    connect_timeout: float = 10.0,
    max_reply: int = MAX_REPLY,
) -> bytes:
    """Send ``payload`` framed and return the reply's payload; MllpError on any trouble."""
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=connect_timeout)
    except TimeoutError as exc:
        raise MllpError(f"connect to {peer} timed out", status="no-connection") from exc
    except OSError as exc:
        raise MllpError(
            f"cannot connect to {peer}: {exc.strerror or exc}", status="no-connection"
        ) from exc
    deadline = time.monotonic() + timeout
    reader = ReplyReader(max_reply)
    with sock:
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(frame(payload))
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    raise MllpError(
                        "peer closed the connection before its reply ended", status="closed"
                    )
                reply = reader.feed(chunk)
                if reply is not None:
                    return reply
        except TimeoutError as exc:
            raise MllpError(f"no complete reply within {timeout:.0f} s", status="timeout") from exc
        except OSError as exc:
            raise MllpError(
                f"connection to {peer} failed: {exc.strerror or exc}", status="network"
            ) from exc
