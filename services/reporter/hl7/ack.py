"""The verdict of an HL7 v2 acknowledgment (original mode, v2.5.1 ch. 2 §2.9.2; MSA-1 from
table 0008) on a delivery:

* ``AA`` (or ``CA``): accepted, delivered;
* ``AE`` (or ``CE``): application error, retried; the reason (MSA-3, ERR-8/ERR-3) is kept
  and the row fails with it once the attempts run out;
* ``AR`` (or ``CR``): rejected, failed at once;
* a reply that is not an ACK of our message (unparseable, no MSA, another control id):
  retried as a protocol error.
"""

from __future__ import annotations

from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from services.reporter.delivery.dispatch import SendOutcome
from services.reporter.hl7.text import unescape

ACCEPTED, ERROR, REJECTED = ("AA", "CA"), ("AE", "CE"), ("AR", "CR")


def _value(message: Message, path: str) -> str:
    element = message
    try:
        for name in path.split("."):
            element = getattr(element, name)
        text = element.to_er7()
    except (HL7apyException, AttributeError, IndexError, ValueError):
        return ""
    return str(text)


def _reason(message: Message) -> str:
    """MSA-3 and the ERR segment's user message or error code text, unescaped."""
    parts = [
        _value(message, "msa.msa_3"),
        _value(message, "err.err_8"),
        _value(message, "err.err_3.cwe_2"),
    ]
    return unescape("; ".join(dict.fromkeys(p for p in parts if p)))[:500]


def classify_ack(reply: bytes, control_id: str) -> SendOutcome:
    """The outcome of one send whose peer answered ``reply`` (an MLLP payload); pure."""
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        text = reply.decode("latin-1")
    try:
        message = parse_message(text.replace("\n", "\r").strip("\r"), validation_level=2)
    except (HL7apyException, ValueError, KeyError, IndexError, AttributeError) as exc:
        return SendOutcome(
            False, True, "bad-ack", f"reply is not an HL7 message: {type(exc).__name__}"
        )
    code = _value(message, "msa.msa_1").upper()
    acked = _value(message, "msa.msa_2")
    if not code:
        return SendOutcome(False, True, "bad-ack", "reply has no MSA segment")
    if acked != control_id:
        return SendOutcome(
            False, True, "bad-ack", f"ACK of another message ({acked[:20]!r}, sent {control_id!r})"
        )
    reason = _reason(message)
    detail = f"ACK {code} of {control_id}" + (f": {reason}" if reason else "")
    if code in ACCEPTED:
        return SendOutcome(True, False, code, detail)
    if code in ERROR:
        return SendOutcome(False, True, code, detail)
    if code in REJECTED:
        return SendOutcome(False, False, code, detail)
    return SendOutcome(False, True, "bad-ack", f"unknown acknowledgment code {code[:8]!r}")
