"""C-STORE SCU to the PACS, and how its answers are classified (PS3.4 B.2.3, PS3.7 C).

Status classes of a C-STORE response (categories as ``pynetdicom.status`` names them):

* Success ``0x0000``; Warning, e.g. ``0xB000`` (coercion of data elements), ``0xB006``
  (elements discarded), ``0xB007`` (data set does not match SOP class): the instance
  was stored, so the delivery is done (the warning is recorded).
* ``0xA7xx`` refused, out of resources: transient, retry later.
* ``0xA9xx`` data set does not match SOP class, ``0xCxxx`` cannot understand, and any
  other failure: permanent; resending the same bytes would fail the same way.
* No response at all (association rejected, aborted, connection refused, timeouts, a
  failed TLS handshake): transient, retried, with the reason logged.

Destinations (``NODULEFLOW_PACS``) are ``AET@host:port``, comma-separated for several
(the PACS and a VNA each get their own delivery rows and retries); ``tls://AET@host:port``
sends over DICOM TLS (PS3.15 B.9, BCP 195: TLS 1.2 or newer, the peer's certificate
verified against ``NODULEFLOW_PACS_TLS_CA``, or the system's CAs, and its host name or IP).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from services.reporter.delivery.dispatch import SendOutcome

log = logging.getLogger(__name__)

SUCCESS = 0x0000


def classify_status(status: int) -> SendOutcome:
    """Map a C-STORE response status to an outcome (pure)."""
    text = f"0x{status:04X}"
    category = code_to_category(status)
    if category in (STATUS_SUCCESS, STATUS_WARNING):
        detail = "stored" if category == STATUS_SUCCESS else "stored with warning"
        return SendOutcome(ok=True, retry=False, status=text, detail=detail)
    if status & 0xFF00 == 0xA700:
        return SendOutcome(ok=False, retry=True, status=text, detail="refused: out of resources")
    if status & 0xFF00 == 0xA900:
        return SendOutcome(
            ok=False, retry=False, status=text, detail="refused: data set does not match SOP class"
        )
    if status & 0xF000 == 0xC000:
        return SendOutcome(ok=False, retry=False, status=text, detail="failed: cannot understand")
    return SendOutcome(ok=False, retry=False, status=text, detail="failed: unexpected status")


TLS_SCHEME = "tls://"


@dataclass(frozen=True)
class PacsAddress:
    aet: str
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, value: str) -> PacsAddress:
        """``AET@host:port``, or ``tls://AET@host:port`` for DICOM TLS."""
        text = value.strip()
        tls = text.lower().startswith(TLS_SCHEME)
        if tls:
            text = text[len(TLS_SCHEME) :]
        aet, _, hostport = text.partition("@")
        host, _, port = hostport.rpartition(":")
        if (
            not aet
            or "://" in text  # a scheme other than tls://
            or len(aet) > 16
            or "\\" in aet
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
        ):
            raise ValueError(
                f"PACS address must look like AET@host:port or tls://AET@host:port, "
                f"got {value[:80]!r}"
            )
        return cls(aet, host, int(port), tls)

    def __str__(self) -> str:
        return f"{TLS_SCHEME if self.tls else ''}{self.aet}@{self.host}:{self.port}"


def destinations(value: str) -> list[PacsAddress]:
    """The destinations of ``NODULEFLOW_PACS`` (comma-separated), in order, each once;
    empty for the file outbox. Raises ``ValueError`` for a malformed or repeated entry."""
    found: list[PacsAddress] = []
    for part in value.split(","):
        if not part.strip():
            continue
        address = PacsAddress.parse(part)
        if any((a.aet, a.host, a.port) == (address.aet, address.host, address.port) for a in found):
            raise ValueError(f"PACS destination listed twice: {part.strip()[:80]!r}")
        found.append(address)
    return found


def tls_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """Client context for DICOM TLS: TLS 1.2 or newer, the server verified against ``ca``
    (the system's CAs without it) and its name; ``cert``/``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise ValueError("PACS TLS client certificate and key go together")
    for path in (ca, cert, key):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"PACS TLS file not found: {path}")
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@dataclass(frozen=True)
class Timeouts:
    """Seconds; a hung PACS costs at most about connect + acse + dimse per attempt."""

    connect: float = 10.0
    acse: float = 15.0
    dimse: float = 30.0
    network: float = 30.0


def _rejection(primitive: Any) -> str:
    return (
        f"association rejected ({getattr(primitive, 'result_str', '?')}, "
        f"source {getattr(primitive, 'source_str', '?')}: "
        f"{getattr(primitive, 'reason_str', '?')})"
    )


def store(
    path: Path,
    address: PacsAddress,
    *,
    calling_aet: str,
    timeouts: Timeouts | None = None,
    tls: ssl.SSLContext | None = None,
) -> SendOutcome:
    """Send one DICOM file by C-STORE; never raises for network trouble. A ``tls://``
    address uses ``tls`` (the default client context without it)."""
    timeouts = timeouts or Timeouts()
    tls_args = None
    if address.tls:
        tls_args = (tls or tls_context(), address.host)
    meta = dcmread(path, stop_before_pixels=True)
    sop_class = meta.SOPClassUID
    syntax = meta.file_meta.TransferSyntaxUID
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae.add_requested_context(sop_class, syntaxes)
    answers: list[Any] = []
    connected = threading.Event()

    def on_acse(event: Any) -> None:
        if getattr(event.primitive, "result", None) in (0x01, 0x02):
            answers.append(event.primitive)

    try:
        assoc = ae.associate(
            address.host,
            address.port,
            ae_title=address.aet,
            tls_args=tls_args,
            evt_handlers=[
                (evt.EVT_ACSE_RECV, on_acse),
                (evt.EVT_CONN_OPEN, lambda _: connected.set()),
            ],
        )
    except OSError as exc:  # name resolution, TLS handshake (ssl.SSLError) and the like
        return SendOutcome(ok=False, retry=True, status="no-association", detail=str(exc))
    if not assoc.is_established:
        if assoc.is_rejected:
            detail = _rejection(answers[0]) if answers else "association rejected"
            status = "rejected"
        elif not connected.is_set():
            detail, status = "connection failed (refused or unreachable)", "no-association"
            if address.tls:
                detail = "connection failed (refused, unreachable or TLS handshake failed)"
        elif assoc.is_aborted:
            detail, status = "association aborted during negotiation", "aborted"
        else:
            detail, status = "connection failed (refused or timed out)", "no-association"
        log.warning("event=pacs_association_failed pacs=%s reason=%s", address, detail)
        return SendOutcome(ok=False, retry=True, status=status, detail=detail)
    try:
        response = assoc.send_c_store(path)
        if "Status" not in response:
            detail = "aborted" if assoc.is_aborted else "no response (timeout or abort)"
            log.warning("event=pacs_store_no_response pacs=%s reason=%s", address, detail)
            return SendOutcome(ok=False, retry=True, status="no-response", detail=detail)
        outcome = classify_status(int(response.Status))
        comment = str(response.get("ErrorComment", "") or "")
        if comment:
            outcome = SendOutcome(
                outcome.ok, outcome.retry, outcome.status, f"{outcome.detail}: {comment}"[:500]
            )
        return outcome
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("event=pacs_store_error pacs=%s error=%s", address, exc.__class__.__name__)
        return SendOutcome(ok=False, retry=True, status="error", detail=str(exc)[:500])
    finally:
        if assoc.is_established:
            assoc.release()
