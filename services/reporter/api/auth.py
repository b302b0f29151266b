"""The API's access rules: :mod:`services.core.auth`, shared with the receiver's DICOMweb
endpoint (the same tokens, JWT keys and scopes)."""

from __future__ import annotations

from services.core.auth import (
    FULL_READ,
    STORE_STUDIES,
    Authenticator,
    AuthError,
    Principal,
    allows,
    is_loopback,
)

__all__ = [
    "FULL_READ",
    "STORE_STUDIES",
    "AuthError",
    "Authenticator",
    "Principal",
    "allows",
    "is_loopback",
]
