"""UID checks and deterministic UID derivation (PS3.5 §9)."""

from __future__ import annotations

import hashlib
import re
import uuid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_LOOSE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object, *, strict: bool = False) -> bool:
    """True for a UID safe to use as a path component: digits and dots, at most 64 chars.

    ``strict`` also refuses leading zeros in a component, as PS3.5 §9.1 requires; the
    storage layer uses the loose form because real scanners emit such UIDs.
    """
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return False
    return bool((_UID if strict else _UID_LOOSE).match(value))


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID (PS3.5 B.2) derived from ``parts``; the same parts give the same UID."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest).int}"
