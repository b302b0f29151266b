"""Versioned message bodies exchanged over the broker (docs/architecture.md, "Messages")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EXCHANGE = "noduleflow"
STUDY_READY = "study.ready"
STUDY_RESULT = "study.result"
INFERENCE_QUEUE = "noduleflow.inference"
REPORTING_QUEUE = "noduleflow.reporting"
ROUTES: dict[str, str] = {STUDY_READY: INFERENCE_QUEUE, STUDY_RESULT: REPORTING_QUEUE}


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = Field(default=1, alias="schema")
    job_id: str = Field(min_length=1, max_length=64)
    study_instance_uid: str = Field(min_length=1, max_length=64)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class SeriesRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    uid: str
    instances: int


class StudyReady(_Message):
    """A study is complete and waits for inference."""

    series: list[SeriesRef]
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class StudyResult(_Message):
    """A job ended; the reporter writes its results back."""

    status: Literal["done", "failed", "skipped"]
    reason: str | None = None
    findings: int = 0
