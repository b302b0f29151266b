"""C-STORE response classification (PS3.4 B.2.3) and PACS address parsing."""

from __future__ import annotations

import pytest

from services.reporter.delivery.pacs import PacsAddress, classify_status


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB006, 0xB007])
def test_success_and_warnings_are_delivered(status: int) -> None:
    outcome = classify_status(status)
    assert outcome.ok and not outcome.retry
    assert outcome.status == f"0x{status:04X}"


@pytest.mark.parametrize("status", [0xA700, 0xA701, 0xA7FF])
def test_out_of_resources_is_retried(status: int) -> None:
    outcome = classify_status(status)
    assert not outcome.ok and outcome.retry


@pytest.mark.parametrize("status", [0xA900, 0xA9FF, 0xC000, 0xC211, 0xCFFF, 0x0122, 0x0211])
def test_refusals_are_permanent(status: int) -> None:
    outcome = classify_status(status)
    assert not outcome.ok and not outcome.retry


def test_address_parsing() -> None:
    address = PacsAddress.parse("ORTHANC@127.0.0.1:4242")
    assert (address.aet, address.host, address.port) == ("ORTHANC", "127.0.0.1", 4242)
    assert str(address) == "ORTHANC@127.0.0.1:4242"


@pytest.mark.parametrize("bad", ["", "ORTHANC", "@h:1", "A@h", "A@h:port", "X" * 17 + "@h:1"])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        PacsAddress.parse(bad)
