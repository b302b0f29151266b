"""HL7 v2 escape sequences for text placed in one component (v2.5.1 ch. 2, §2.7).

hl7apy builds and parses the message structure; a value we set is read as ER7, so the
delimiters inside free text (a name with ``^``, a summary with ``|``) are escaped here first.
Only the default encoding characters ``|^~\\&`` are used.
"""

from __future__ import annotations

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(text: str) -> str:
    """``text`` safe inside one component; control characters become spaces."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    for raw, sequence in _ESCAPES:
        cleaned = cleaned.replace(raw, sequence)
    return cleaned


def unescape(text: str) -> str:
    """The inverse of :func:`escape` (for ACK texts and tests)."""
    for raw, sequence in reversed(_ESCAPES):
        text = text.replace(sequence, raw)
    return text


def components(*values: str) -> str:
    """A field's ER7 value from its components, each escaped; trailing empties dropped."""
    parts = [escape(v) for v in values]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)
