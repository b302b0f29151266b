"""One settings class for every service (environment prefix ``NODULEFLOW_``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "token", "xxx"}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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


class Settings(BaseSettings):
    """Runtime configuration; built once at start-up and passed down."""

    model_config = SettingsConfigDict(env_prefix="NODULEFLOW_", extra="ignore")

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
    max_associations: int = 16
    max_pdu_size: int = 131072
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    min_free_disk_mb: int = 512
    reconcile_margin_seconds: float = Field(default=3600.0, ge=0)  # see receiver/reconcile.py

    study_idle_seconds: float = 10.0
    release_grace_seconds: float = 2.0

    pacs: str = ""
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
    public_base_url: str = ""

    model_dir: Path = Field(default_factory=lambda: default_model_dir())
    providers: str = "auto"
    job_max_attempts: int = 3

    log_level: str = "INFO"

    @field_validator("allowed_aets", "api_tokens", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_tokens")
    @classmethod
    def _no_placeholder_tokens(cls, value: list[str]) -> list[str]:
        for token in value:
            if token.lower() in _PLACEHOLDER_SECRETS or len(token) < 16:
                raise ValueError("API token is a placeholder or shorter than 16 characters")
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
