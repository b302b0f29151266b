"""The STOW-RS multipart/related reader: parts at any chunking, and every malformed body refused."""

from __future__ import annotations

import pytest

from services.receiver.dicomweb.multipart import (
    MediaType,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)

#: What Orthanc's DICOMweb plugin sends: longer than RFC 2046's 70 characters.
ORTHANC = "367c42bd-cac7-4a5f-a3a3-171da214994c-367c42bd-cac7-4a5f-a3a3-171da214994c"
PARTS = [b"\x00" * 200 + b"DICM" + bytes(range(256)) * 20, b"Y\r\n--ab\r\n--abX", b""]


def body(boundary: bytes = b"abc", *, preamble: bytes = b"", parts: list[bytes] = PARTS) -> bytes:
    out = preamble
    for part in parts:
        out += b"\r\n--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part
    return out + b"\r\n--" + boundary + b"--\r\nepilogue"


def read(data: bytes, chunk: int, boundary: bytes = b"abc") -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: tuple[dict[str, str], bytearray] | None = None
    for offset in range(0, len(data), chunk):
        for event in reader.feed(data[offset : offset + chunk]):
            if isinstance(event, PartStart):
                current = (event.headers, bytearray())
            elif isinstance(event, PartData):
                assert current is not None
                current[1].extend(event.data)
            elif isinstance(event, PartEnd):
                assert current is not None
                parts.append((current[0], bytes(current[1])))
                current = None
    reader.close()
    return parts


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 64, 1000, 1 << 20])
def test_parts_come_out_whole_at_any_chunking(chunk: int) -> None:
    parts = read(body(preamble=b"ignored preamble"), chunk)
    assert [data for _, data in parts] == PARTS
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)


def test_first_delimiter_without_leading_crlf_and_transport_padding() -> None:
    data = b"--abc  \r\nContent-Type: application/dicom\r\n\r\nX\r\n--abc--"
    assert read(data, 3) == [({"content-type": "application/dicom"}, b"X")]


def test_part_without_headers() -> None:
    assert read(b"--abc\r\n\r\nX\r\n--abc--", 1) == [({}, b"X")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (body(b"other"), "no multipart delimiter found"),  # the body uses another boundary
        (body()[:-30], "body ended before the close delimiter"),  # truncated
        (b"", "no multipart delimiter found"),
        (b"--abc\r\nno colon here\r\n\r\nX\r\n--abc--", "malformed part header"),
        (b"--abcjunk\r\n\r\nX\r\n--abc--", "malformed delimiter line"),
        (b"--abc\r\n" + b"A: " + b"x" * (20 << 10), "part header block too large"),
    ],
)
def test_malformed_bodies_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(MultipartError) as caught:
        read(data, 4096)
    assert caught.value.reason == reason


def test_preamble_and_epilogue_are_bounded() -> None:
    with pytest.raises(MultipartError, match="no multipart delimiter"):
        MultipartReader(b"abc").feed(b"x" * (65 << 10))
    reader = MultipartReader(b"abc")
    reader.feed(b"--abc--")
    assert reader.done
    with pytest.raises(MultipartError, match="after the close delimiter"):
        reader.feed(b"x" * (65 << 10))


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b:c"', b"a b:c"),
        ("Multipart/Related; boundary=xyz; type=application/dicom", b"xyz"),
        (f"multipart/related; type=application/dicom; boundary={ORTHANC}", ORTHANC.encode()),
    ],
)
def test_boundary_parameter(header: str, boundary: bytes) -> None:
    media = MediaType.parse(header)
    assert media.value == "multipart/related"
    assert media.params["type"] == "application/dicom"
    assert boundary_of(media) == boundary


@pytest.mark.parametrize(
    "header",
    [
        "multipart/related; type=application/dicom",  # none
        'multipart/related; boundary=""',
        'multipart/related; boundary="ends with space "',
        "multipart/related; boundary=" + "x" * 201,
        'multipart/related; boundary="bad\\"quote"',
    ],
)
def test_malformed_boundaries_are_refused(header: str) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        boundary_of(MediaType.parse(header))
