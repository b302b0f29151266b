"""Storing studies (STOW-RS) needs create on ImagingStudy: STOW_TOKENS or a JWT scope grant
it, read tokens and read scopes do not."""

from __future__ import annotations

import pytest

from services.core.auth import FULL_READ, STORE_STUDIES, Authenticator, allows
from services.core.settings import Settings

READ_TOKEN = "c7d1f09a4b2e8d3f6a5c0b9e1d4f7a2c"
STORE_TOKEN = "9e4b1a7c3f0d2e8b5a6c1f9d0e3b7a4c"


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (STORE_STUDIES, True),
        (["system/*.c"], True),
        (["user/ImagingStudy.cruds"], True),
        (["system/ImagingStudy.write"], True),  # SMART v1
        (["system/*.*"], True),
        (FULL_READ, False),
        (["system/ImagingStudy.read"], False),  # v1 read grants r and s only
        (["system/ImagingStudy.rs"], False),
        (["patient/ImagingStudy.c"], False),
        (["system/Observation.c"], False),
    ],
)
def test_create_on_imaging_study(scopes: list[str], allowed: bool) -> None:
    assert allows(scopes, "ImagingStudy", "c") is allowed


def test_read_scopes_keep_their_meaning() -> None:
    assert allows(["system/Patient.read"], "Patient", "r")
    assert allows(["system/Patient.read"], "Patient", "s")
    assert not allows(["system/Patient.write"], "Patient", "r")


def test_store_tokens_only_store_and_read_tokens_only_read() -> None:
    settings = Settings(api_tokens=[READ_TOKEN], stow_tokens=[STORE_TOKEN])
    auth = Authenticator(settings, host="0.0.0.0")
    store = auth.authenticate(f"Bearer {STORE_TOKEN}", "10.0.0.9")
    assert store.scopes == STORE_STUDIES and allows(store.scopes, "ImagingStudy", "c")
    assert not allows(store.scopes, "Patient", "r")
    read = auth.authenticate(f"Bearer {READ_TOKEN}", "10.0.0.9")
    assert not allows(read.scopes, "ImagingStudy", "c")


def test_open_access_needs_a_loopback_listening_address() -> None:
    with pytest.raises(RuntimeError, match="not a loopback address"):
        Authenticator(Settings(), host="0.0.0.0")
    principal = Authenticator(Settings(), host="127.0.0.1").authenticate(None, "127.0.0.1")
    assert allows(principal.scopes, "ImagingStudy", "c")
