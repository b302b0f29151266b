"""``fast.uids.set_uid``: the same UIDs, refusals and warnings as pynetdicom's own, with the
checks that passed remembered."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import _config, utils
from pynetdicom.presentation import PresentationContext

from services.receiver.fast import uids

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    uids._checked.cache_clear()
    yield
    uids._checked.cache_clear()


@pytest.mark.parametrize(
    "value",
    [CT_IMAGE, CT_IMAGE.encode(), UID(CT_IMAGE), f"{CT_IMAGE} ", "", b"", None],
)
def test_same_result_as_pynetdicom(value: object) -> None:
    expected = utils.set_uid(value, "Affected SOP Class UID")  # type: ignore[arg-type]
    for _ in range(2):  # the second answer comes from the cache
        got = uids.set_uid(value, "Affected SOP Class UID")  # type: ignore[arg-type]
        assert got == expected
        assert type(got) is type(expected)


def test_passed_checks_are_remembered() -> None:
    first = uids.set_uid(CT_IMAGE, "SOP Class UID")
    second = uids.set_uid(CT_IMAGE.encode(), "SOP Class UID")
    again = uids.set_uid(CT_IMAGE, "Abstract Syntax Name")
    assert first is again  # one object for the same text
    assert second == first
    assert uids._checked.cache_info().hits == 1


@pytest.mark.parametrize("enforce", [False, True])
@pytest.mark.parametrize("value", ["1.2.abc", "1." * 40, b"1.2.\xff", "1.02.3"])
def test_refusals_come_from_pynetdicom_every_time(
    value: str | bytes, enforce: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", enforce)
    try:
        expected = utils.set_uid(value, "SOP Class UID")
    except ValueError as refused:
        for _ in range(2):
            with pytest.raises(ValueError) as raised:
                uids.set_uid(value, "SOP Class UID")
            assert str(raised.value) == str(refused)
        return
    assert not enforce or len(value) <= 64
    for _ in range(2):
        assert uids.set_uid(value, "SOP Class UID") == expected
    # Nothing non-conformant is answered from the cache: pynetdicom decides each time.
    assert uids._checked(value, True, _config.VALIDATORS["UI"]) is None


def test_empty_refused_where_not_allowed() -> None:
    with pytest.raises(ValueError, match="must not be an empty"):
        uids.set_uid("", "Abstract Syntax Name", allow_empty=False)


def test_non_conformant_warning_every_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    for _ in range(2):
        assert uids.set_uid("1.02.3", "SOP Class UID") == "1.02.3"  # a leading zero
    warnings = [r for r in caplog.records if "Non-conformant" in r.getMessage()]
    assert len(warnings) == 2


def test_private_encoding_kept() -> None:
    private = UID("1.2.3.4.5")
    private.set_private_encoding(False, True)
    got = uids.set_uid(private, "Transfer Syntax Name")
    assert got is not None
    assert got.is_little_endian and not got.is_implicit_VR


def test_a_changed_validator_applies_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert uids.set_uid(CT_IMAGE, "SOP Class UID") == CT_IMAGE

    def refuse_all(value: str) -> tuple[bool, str]:
        return False, "refused by this site"

    monkeypatch.setitem(_config.VALIDATORS, "UI", refuse_all)
    with pytest.raises(ValueError, match="refused by this site"):
        uids.set_uid(CT_IMAGE, "SOP Class UID")


def test_installed_in_presentation_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    for patch in uids.patches():
        monkeypatch.setattr(patch.owner, patch.name, patch.replacement)
    context = PresentationContext()
    context.abstract_syntax = CT_IMAGE
    context.add_transfer_syntax(ExplicitVRLittleEndian)
    assert context.abstract_syntax == CT_IMAGE
    assert uids._checked.cache_info().currsize >= 1
