"""Several result destinations and DICOM TLS to them: parsing (pure), the setting's check
at load, and the client TLS context."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.core.settings import Settings
from services.reporter.delivery.pacs import PacsAddress, destinations, tls_context
from services.reporter.delivery.senders import dicom_sender
from tests.factories.pki import make_pki


def test_tls_addresses_round_trip() -> None:
    address = PacsAddress.parse("tls://PACS@pacs.example:2762")
    assert (address.aet, address.host, address.port, address.tls) == (
        "PACS",
        "pacs.example",
        2762,
        True,
    )
    assert str(address) == "tls://PACS@pacs.example:2762"
    assert str(PacsAddress.parse(" VNA@10.0.0.5:104 ")) == "VNA@10.0.0.5:104"
    assert PacsAddress.parse("TLS://PACS@h:1").tls


def test_destinations_in_order_each_once() -> None:
    found = destinations("PACS@pacs:104, tls://VNA@vna:2762,")
    assert [str(d) for d in found] == ["PACS@pacs:104", "tls://VNA@vna:2762"]
    assert destinations("") == destinations(" , ") == []
    with pytest.raises(ValueError, match="listed twice"):
        destinations("PACS@pacs:104,tls://PACS@pacs:104")


@pytest.mark.parametrize(
    "bad", ["PACS@pacs", "@pacs:104", "https://PACS@pacs:104", "PACS@pacs:0", "P\\ACS@h:1"]
)
def test_malformed_destinations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="AET@host:port"):
        destinations(f"OK@h:104,{bad}")


@pytest.mark.parametrize("bad", ["PACS@pacs", "PACS@pacs:104,VNA", "ftp://A@h:1"])
def test_the_setting_is_checked_at_load(bad: str) -> None:
    with pytest.raises(ValidationError, match="NODULEFLOW_PACS"):
        Settings(pacs=bad)
    assert Settings(pacs="PACS@pacs:104, tls://VNA@vna:2762").pacs


def test_tls_context_verifies_the_server_with_tls_1_2_or_newer(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    context = tls_context(pki["ca.pem"], pki["client.pem"], pki["client.key"])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="go together"):
        tls_context(pki["ca.pem"], pki["client.pem"], None)
    with pytest.raises(ValueError, match="not found"):
        tls_context(tmp_path / "missing.pem")


def test_the_sender_refuses_bad_tls_files_at_start(settings: Settings, tmp_path: Path) -> None:
    broken = settings.model_copy(
        update={"pacs": "tls://PACS@h:2762", "pacs_tls_ca": tmp_path / "missing.pem"}
    )
    with pytest.raises(ValueError, match="not found"):
        dicom_sender(broken)
    assert dicom_sender(settings.model_copy(update={"pacs": "PACS@h:104"})) is not None
