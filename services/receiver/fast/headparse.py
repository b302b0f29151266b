"""Fast, pure reader for the first bytes of a received PS3.10 file (PS3.5 §7, PS3.10 §7.1).

Walks the top-level data elements of an Explicit or Implicit VR Little Endian data set (the
encoding of every transfer syntax we accept except Deflate and Big Endian) up to
(0020,0037) and returns the raw values of the attributes the index needs. Anything it does
not fully understand (other encodings, character sets, truncated input, odd nesting)
returns None, and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_FALLBACK_SYNTAXES = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}  # Deflate, Big Endian
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}  # fmt: skip
_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LAST_WANTED = 0x00200037  # ImageOrientationPatient: nothing after it is needed

#: (group << 16 | element) → keyword, for the attributes read.
WANTED: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080030: "StudyTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080070: "Manufacturer",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
}


class _Unsupported(Exception):
    pass


def _file_meta(buf: bytes) -> tuple[int, str]:
    """Offset of the data set and its Transfer Syntax UID."""
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise _Unsupported
    tag, vr, length = struct.unpack_from("<I2sH", buf, 132)
    if tag != 0x00000002 or vr != b"UL" or length != 4:  # (0002,0000) read little-endian
        raise _Unsupported
    (group_length,) = struct.unpack_from("<I", buf, 140)
    start, end = 144, 144 + group_length
    syntax = ""
    pos = start
    while pos < end:
        group, element, vr = struct.unpack_from("<HH2s", buf, pos)
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            pos += 8
        if (group, element) == (0x0002, 0x0010):
            syntax = buf[pos : pos + length].rstrip(b"\x00 ").decode("ascii")
        pos += length
    if pos != end or not syntax or end > len(buf):
        raise _Unsupported
    return end, syntax


class _Walker:
    def __init__(self, buf: bytes, implicit: bool) -> None:
        self.buf = buf
        self.implicit = implicit

    def header(self, pos: int) -> tuple[int, bytes, int, int]:
        """(tag, vr, value length, value offset) of the element at ``pos``."""
        if pos + 8 > len(self.buf):
            raise _Unsupported
        group, element = struct.unpack_from("<HH", self.buf, pos)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            (length,) = struct.unpack_from("<I", self.buf, pos + 4)
            return tag, b"", length, pos + 8
        vr = self.buf[pos + 4 : pos + 6]
        if not (vr.isalpha() and vr.isupper()):
            raise _Unsupported  # not explicit VR after all (pydicom copes with such files)
        if vr in _LONG_VRS:
            if pos + 12 > len(self.buf):
                raise _Unsupported
            (length,) = struct.unpack_from("<I", self.buf, pos + 8)
            return tag, vr, length, pos + 12
        (length,) = struct.unpack_from("<H", self.buf, pos + 6)
        return tag, vr, length, pos + 8

    def skip_sequence(self, pos: int, depth: int) -> int:
        """Offset after an undefined-length sequence whose items start at ``pos``."""
        if depth > 8:
            raise _Unsupported
        while True:
            tag, _, length, value = self.header(pos)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise _Unsupported
            pos = value + length if length != _UNDEFINED else self.skip_item(value, depth)

    def skip_item(self, pos: int, depth: int) -> int:
        while True:
            tag, vr, length, value = self.header(pos)
            if tag == _ITEM_END:
                return value
            if length == _UNDEFINED:
                if not self.implicit and vr != b"SQ":
                    raise _Unsupported  # UN of undefined length: implicit inside, give up
                pos = self.skip_sequence(value, depth + 1)
            else:
                pos = value + length


def read_head(buf: bytes) -> dict[str, str] | None:
    """Raw text values of :data:`WANTED` plus ``TransferSyntaxUID``, or None to fall back."""
    try:
        offset, syntax = _file_meta(buf)
        if syntax in _FALLBACK_SYNTAXES:
            return None
        walker = _Walker(buf, implicit=syntax == IMPLICIT_VR_LE)
        raw: dict[str, bytes] = {}
        pos = offset
        while True:
            tag, vr, length, value = walker.header(pos)
            if tag > _LAST_WANTED:
                break
            if length == _UNDEFINED:
                if not walker.implicit and vr != b"SQ":
                    return None
                pos = walker.skip_sequence(value, 0)
                continue
            if value + length > len(buf):
                return None
            keyword = WANTED.get(tag)
            if keyword is not None:
                raw[keyword] = buf[value : value + length]
            pos = value + length
        charset = raw.pop("SpecificCharacterSet", b"").decode("ascii", "replace").strip()
        encoding = _CHARSETS.get(charset)
        if encoding is None:
            return None
        values = {k: v.decode(encoding).rstrip("\x00 ").lstrip() for k, v in raw.items()}
    except (_Unsupported, struct.error, UnicodeDecodeError):
        return None
    values["TransferSyntaxUID"] = syntax
    return values
