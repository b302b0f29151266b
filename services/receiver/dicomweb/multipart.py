"""An incremental ``multipart/related`` reader (RFC 2387 over RFC 2046 §5.1), for STOW-RS.

Fed the request body chunk by chunk, it yields part headers, part data and part ends; it
never holds more than one header block or a delimiter's length of body bytes, so a part's
size is the caller's to bound. Anything that is not a well-formed multipart body (no
delimiter, a header block without its blank line, a body that ends before the close
delimiter) raises :class:`MultipartError`; nothing is guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from services.core.errors import PermanentError

#: RFC 2046 §5.1.1: bchars, not ending in a space; at most 70 by the RFC, but Orthanc's
#: DICOMweb client sends 73 (two UUIDs joined by "-"), so up to 200 are taken.
MAX_BOUNDARY = 200
_BCHARS = r"0-9A-Za-z'()+_,\-./:=?"
_BOUNDARY = re.compile(f"[{_BCHARS} ]{{0,{MAX_BOUNDARY - 1}}}[{_BCHARS}]")
MAX_HEADER_BYTES = 16 << 10  # one part's header block
MAX_PREAMBLE_BYTES = 64 << 10  # text before the first delimiter, discarded
MAX_EPILOGUE_BYTES = 64 << 10  # text after the close delimiter, discarded


class MultipartError(PermanentError, ValueError):
    """The body is not a well-formed multipart body; ``reason`` is safe to log."""

    code = "bad-multipart"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaType:
    """A parsed ``Content-Type`` value: ``type/subtype`` in lower case and its parameters."""

    value: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str | None) -> MediaType:
        message = Message()
        message["content-type"] = header or ""
        params = {
            str(key).lower(): str(val)
            for key, val in (message.get_params() or [])[1:]
            if isinstance(val, str)
        }
        return cls(message.get_content_type().lower(), params)


def boundary_of(media: MediaType) -> bytes:
    """The ``boundary`` parameter of a multipart media type, checked against RFC 2046."""
    boundary = media.params.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError("missing or malformed boundary parameter")
    return boundary.encode("ascii")


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # lower-case names

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise MultipartError("folded part header")
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or not name.isascii():
            raise MultipartError("malformed part header")
        headers[name.strip().decode("ascii").lower()] = value.strip().decode("latin-1")
    return headers


class MultipartReader:
    """Feed it body bytes with :meth:`feed`, then call :meth:`close` at the end of the body.

    States: ``preamble`` (before the first delimiter), ``delimiter`` (at a delimiter
    line), ``headers``, ``body``, ``done`` (after the close delimiter; the epilogue is
    discarded).
    """

    def __init__(self, boundary: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        # The CRLF before a delimiter belongs to it; the body starts as if after a CRLF, so
        # a first delimiter at offset 0 (no preamble) is found like any other.
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._state = "preamble"
        self._max_header_bytes = max_header_bytes
        self._discarded = 0
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[Event]:
        if self._state == "done":
            self._discarded += len(data)
            if self._discarded > MAX_EPILOGUE_BYTES:
                raise MultipartError("too much data after the close delimiter")
            return []
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: raises :class:`MultipartError` unless the close delimiter came."""
        if self._state != "done":
            raise MultipartError(
                "no multipart delimiter found"
                if self._state == "preamble"
                else "body ended before the close delimiter"
            )

    # ------------------------------------------------------------------ states

    def _step(self, events: list[Event]) -> bool:
        """Advance once on the buffered bytes; False when more input is needed."""
        if self._state == "headers":
            return self._read_headers(events)
        if self._state == "delimiter":
            return self._read_delimiter_line()
        if self._state == "done":
            return False
        at = self._buffer.find(self._delimiter)
        if at < 0:  # keep what could be the start of a delimiter
            cut = max(0, len(self._buffer) - (len(self._delimiter) - 1))
            if self._state == "body" and cut:
                events.append(PartData(bytes(self._buffer[:cut])))
            elif self._state == "preamble":
                self._discarded += cut
                if self._discarded > MAX_PREAMBLE_BYTES:
                    raise MultipartError("no multipart delimiter found")
            del self._buffer[:cut]
            return False
        if self._state == "body":
            if at:
                events.append(PartData(bytes(self._buffer[:at])))
            events.append(PartEnd())
        del self._buffer[:at]
        self._state = "delimiter"
        return True

    def _read_delimiter_line(self) -> bool:
        """The buffer starts with a delimiter: the close delimiter, or the start of a part."""
        end = len(self._delimiter)
        if len(self._buffer) < end + 2:
            return False
        if self._buffer[end : end + 2] == b"--":
            self._state = "done"
            self._discarded = len(self._buffer) - end - 2
            del self._buffer[:]
            if self._discarded > MAX_EPILOGUE_BYTES:
                raise MultipartError("too much data after the close delimiter")
            return False
        # transport padding (spaces, tabs) may follow a delimiter before its CRLF
        line_end = self._buffer.find(b"\r\n", end)
        if line_end < 0:
            if len(self._buffer) - end > 256:
                raise MultipartError("malformed delimiter line")
            return False
        if self._buffer[end:line_end].strip(b" \t"):
            raise MultipartError("malformed delimiter line")
        del self._buffer[: line_end + 2]
        self._state = "headers"
        return True

    def _read_headers(self, events: list[Event]) -> bool:
        if self._buffer.startswith(b"\r\n"):  # a part without headers
            block, rest = b"", 2
        else:
            at = self._buffer.find(b"\r\n\r\n")
            if at < 0:
                if len(self._buffer) > self._max_header_bytes:
                    raise MultipartError("part header block too large")
                return False
            if at > self._max_header_bytes:
                raise MultipartError("part header block too large")
            block, rest = bytes(self._buffer[:at]), at + 4
        del self._buffer[:rest]
        # An empty part body is followed at once by "\r\n--boundary": found as a delimiter.
        self.parts += 1
        events.append(PartStart(_headers(block)))
        self._state = "body"
        return True
