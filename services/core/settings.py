"""One settings class for every service (environment prefix ``NODULEFLOW_``)."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Static API tokens: at least this long, and at least this many bits by the estimate of
#: :func:`token_weakness` (``openssl rand -hex 32`` gives 64 characters, ~250 bits).
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_BITS = 32.0
#: Words that mark a token as a placeholder or a guessable password, found in the token with
#: case, separators and common digit-for-letter swaps ignored (``Ch4nge-M3`` is ``changeme``).
WEAK_TOKEN_WORDS = (
    "changeme",
    "password",
    "passwd",
    "secret",
    "token",
    "letmein",
    "admin",
    "default",
    "example",
    "placeholder",
    "qwerty",
    "dummy",
)
_LEET = str.maketrans("0134578@$", "oieastbas")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _collapse_runs(text: str) -> str:
    """``text`` with every run of three or more characters that repeat or count up or down
    by one (``aaaa``, ``1234``, ``fedc``) kept as its first character."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = i + 1
        if j < len(text):
            step = ord(text[j]) - ord(text[i])
            if step in (-1, 0, 1):
                while j + 1 < len(text) and ord(text[j + 1]) - ord(text[j]) == step:
                    j += 1
                if j - i >= 2:  # three or more characters: one
                    out.append(text[i])
                    i = j + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def token_bits(token: str) -> float:
    """A conservative strength estimate in bits: the Shannon entropy of the token's own
    characters times its length, after runs (``aaaa``, ``1234``) count as one character."""
    text = _collapse_runs(token)
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c * math.log2(c / n) for c in counts.values())


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too weak for a static API token, or None. The reason never quotes
    the token."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"shorter than {MIN_TOKEN_LENGTH} characters"
    folded = re.sub(r"[^a-z]", "", token.lower().translate(_LEET))
    for word in WEAK_TOKEN_WORDS:
        if word in folded:
            return f"contains the placeholder or dictionary word {word!r}"
    if re.fullmatch(r"(.+?)\1+", token, flags=re.DOTALL):
        return "repeats a shorter pattern"
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        return (
            f"too predictable (about {bits:.0f} bits; repeated or sequential characters count once)"
        )
    return None


def default_model_dir() -> Path:
    """The shipped model, found wherever the command runs.

    A source checkout (or an editable install) keeps it in ``models/nodule-seg`` beside the
    ``services`` package; an installation from a wheel finds it under
    ``<prefix>/share/noduleflow/models/nodule-seg`` (the container images copy it elsewhere
    and set ``NODULEFLOW_MODEL_DIR``).
    """
    checkout = Path(__file__).resolve().parents[2] / "models" / "nodule-seg"
    if (checkout / "model.json").is_file():
        return checkout
    return Path(sys.prefix) / "share" / "noduleflow" / "models" / "nodule-seg"


class StabilityRule(BaseModel):
    """When a study from one calling AE is stable (``NODULEFLOW_STABILITY_RULES``, JSON keyed
    by AE title): ``stable_age_seconds`` without a new instance, as Orthanc's ``StableAge``;
    ``release_grace_seconds`` after its associations were released, or None for senders that
    route instance by instance, whose released association says nothing about the study."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stable_age_seconds: float = Field(gt=0)
    release_grace_seconds: float | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    """Runtime configuration; built once at start-up and passed down."""

    # hide_input_in_errors: a refused value (an API token) is never echoed in the error
    model_config = SettingsConfigDict(
        env_prefix="NODULEFLOW_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "sqlite:///var/noduleflow.db"
    broker_url: str = ""
    broker_prefix: str = "noduleflow"
    storage_dir: Path = Path("var/storage")
    outbox_dir: Path = Path("var/outbox")

    ae_title: str = "NODULEFLOW"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    allowed_aets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    receiver_processes: int = 0  # 0 = one per CPU, at most 4 (`noduleflow receiver`)
    max_associations: int = 16  # negotiated associations per SCP process
    # Connections that have not finished association negotiation (receiver/admission.py):
    acse_timeout_seconds: float = Field(default=5.0, gt=0)  # closed after this long
    max_pending_connections: int = Field(default=32, ge=1)  # per SCP process
    max_connections_per_peer: int = Field(default=16, ge=1)  # per source address and process
    max_pdu_size: int = 131072
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    min_free_disk_mb: int = 512
    reconcile_margin_seconds: float = Field(default=3600.0, ge=0)  # see receiver/reconcile.py
    # DICOMweb STOW-RS ingest in the receiver (receiver/dicomweb, docs/operations.md): off
    # while the port is 0; the API's bearer tokens/JWTs, plus store-only STOW_TOKENS.
    dicomweb_host: str = "127.0.0.1"
    dicomweb_port: int = Field(default=0, ge=0, le=65535)
    stow_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stow_max_instance_mb: int = Field(default=1024, ge=1)  # one part; larger: 413
    stow_max_request_mb: int = Field(default=4096, ge=1)  # one request body; larger: 413
    # Retention of images and outbox artefacts (core/retention, docs/operations.md): off
    # unless an age or a high-water mark is set; purges run in the receiver.
    retention_max_age_days: float = Field(default=0.0, ge=0)  # 0 = no age limit
    retention_high_water: str = ""  # "85%" of the file system, or stored bytes: "500GB"
    retention_low_water: str = ""  # purge down to this; "" = 90 % of the high-water mark
    retention_interval_seconds: float = Field(default=300.0, gt=0)

    study_idle_seconds: float = 10.0
    release_grace_seconds: float = 2.0
    # Completion (receiver/completion.py, docs/operations.md "Study completion"):
    stability_rules: dict[str, StabilityRule] = Field(default_factory=dict)  # by calling AE
    gap_wait_seconds: float = Field(default=120.0, ge=0)  # a series with gaps waits this long
    incomplete_wait_seconds: float = Field(default=900.0, ge=0)  # refused/interrupted: resend
    min_lung_coverage_mm: float = Field(default=0.0, ge=0)  # shorter slabs wait, flagged; 0 off

    # Destinations of the DICOM results: AET@host:port, comma-separated for several (PACS,
    # VNA), tls://AET@host:port for DICOM TLS (reporter/delivery/pacs.py); "" = file outbox.
    pacs: str = ""
    pacs_tls_ca: Path | None = None  # CA bundle the PACS certificates are checked against
    pacs_tls_cert: Path | None = None  # client certificate and key, for mutual TLS
    pacs_tls_key: Path | None = None
    delivery_max_attempts: int = 8
    delivery_backoff_seconds: float = 2.0

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_rate_limit: float = 50.0  # requests/s per client address and API process; 0 = off
    api_rate_burst: int = 200
    jwt_public_key: Path | None = None
    jwt_audience: str = ""
    jwt_issuer: str = ""
    fhir_push_url: str = ""
    # OAuth 2.0 client credentials for the push (reporter/fhir/oauth.py); off without a
    # token URL. Auth: client_secret_basic (default with a secret), client_secret_post, or
    # private_key_jwt (default with a key file: RS384 for RSA, ES384 for EC P-384).
    fhir_push_token_url: str = ""
    fhir_push_client_id: str = ""
    fhir_push_client_secret: SecretStr | None = None
    fhir_push_private_key: Path | None = None
    fhir_push_key_id: str = ""
    fhir_push_auth: str = ""
    fhir_push_scope: str = ""
    # HL7 v2.5.1 ORU^R01 over MLLP (reporter/hl7): off without a peer (host:port).
    hl7_peer: str = ""
    hl7_sending_application: str = "NODULEFLOW"
    hl7_sending_facility: str = ""
    hl7_receiving_application: str = ""
    hl7_receiving_facility: str = ""
    hl7_ack_timeout_seconds: float = Field(default=30.0, gt=0)
    public_base_url: str = ""
    # FHIR Patient.identifier.system of the DICOM Patient ID (the MRN), unless the study's
    # Issuer of Patient ID (0010,0021) is itself a URI or an OID (docs/fhir.md).
    mrn_system: str = ""
    # Link from the worklist and study page into a viewer: {study}, {series}, {instance}
    # (services/core/viewer.py); "" = no link.
    viewer_url_template: str = ""

    model_dir: Path = Field(default_factory=lambda: default_model_dir())
    providers: str = "auto"
    job_max_attempts: int = 3
    # Jobs one worker process runs at once, sharing its model (worker/consumer.py):
    # two keep a small machine's cores busy through each other's single-threaded stages.
    worker_concurrency: int = Field(default=2, ge=1, le=16)
    # On a CPU provider, each of those jobs runs the model on its share of the cores in a
    # session of its own while another job is in hand, alone on all of them
    # (analysis/lanes.py); costs one more model session per job (about 230 MB each).
    worker_split_cores: bool = True
    # The process that analyses keeps freed memory for the next study's arrays instead of
    # returning it to the kernel (core/heap.py): its resident memory stays at its peak.
    worker_keep_memory: bool = True
    # The receiver lowers its CPU priority to this nice value at start so the analysis gets
    # the cores first (core/priority.py); 0 = leave it. The reporter keeps its own: its
    # FHIR API answers people.
    receiver_nice: int = Field(default=10, ge=0, le=19)

    log_level: str = "INFO"

    @field_validator("allowed_aets", "api_tokens", "stow_tokens", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_tokens", "stow_tokens")
    @classmethod
    def _strong_tokens(cls, value: list[str], info: ValidationInfo) -> list[str]:
        name = f"NODULEFLOW_{str(info.field_name).upper()}"
        for number, token in enumerate(value, start=1):
            reason = token_weakness(token)
            if reason is not None:
                raise ValueError(
                    f"{name}: token {number} of {len(value)} is refused: "
                    f"{reason}. Generate tokens with `openssl rand -hex 32`."
                )
        return value

    @field_validator("mrn_system")
    @classmethod
    def _mrn_system(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s|]+", value):
            raise ValueError(
                "NODULEFLOW_MRN_SYSTEM must be an absolute URI without spaces or '|', "
                f"e.g. urn:oid:1.2.3 or https://hospital.example/mrn; got {value[:80]!r}"
            )
        return value

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_url_template(cls, value: str) -> str:
        from services.core.viewer import check_template

        return check_template(value)

    @field_validator("retention_high_water", "retention_low_water")
    @classmethod
    def _watermark(cls, value: str) -> str:
        from services.core.retention.policy import Watermark

        Watermark.parse(value, name="retention watermark")  # a clear error when malformed
        return value

    @field_validator("pacs")
    @classmethod
    def _pacs(cls, value: str) -> str:
        entry = re.compile(r"(tls://)?[^@\\\s]{1,16}@[^\s:@]+(:[0-9]{1,5})", re.IGNORECASE)
        for part in value.split(","):
            text = part.strip()
            if text and (not entry.fullmatch(text) or "://" in text.lower().removeprefix("tls://")):
                raise ValueError(
                    "NODULEFLOW_PACS: each destination must look like AET@host:port or "
                    f"tls://AET@host:port (comma-separated); got {text[:80]!r}"
                )
        return value

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value:
            raise ValueError("AE title must be 1-16 characters without backslash")
        return value

    @property
    def pacs_address(self) -> tuple[str, str, int] | None:
        """``(aet, host, port)`` parsed from ``AET@host:port``, or None for the file outbox."""
        if not self.pacs:
            return None
        aet, _, hostport = self.pacs.partition("@")
        host, _, port = hostport.rpartition(":")
        if not aet or not host or not port.isdigit():
            raise ValueError(f"PACS must look like AET@host:port, got {self.pacs!r}")
        return aet, host, int(port)

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.api_host}:{self.api_port}"
