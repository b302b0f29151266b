"""The FHIR face of report versions (:mod:`services.reporter.versions`).

* DiagnosticReport ``<report id>``: version *k* is the study's *k*-th published analysis,
  status ``final`` for the first and ``amended`` after; ``lastUpdated`` is when that analysis
  finished. Only the current version is found by search and read.
* Observation ``<job id>-<index>``: version 1 as its analysis issued it; when a later
  analysis supersedes that one, version 2, ``entered-in-error``, last updated at that moment.
  A client that counts current Observations (or the current report's results) never counts
  a finding twice.
* ETags are weak, ``W/"<versionId>"`` (FHIR http "Managing Resource Contention").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func

from services.core.db import Job, JobState
from services.reporter.fhir.common import instant

DONE = JobState.DONE.value
RETRACTED = "entered-in-error"


@dataclass(frozen=True)
class Version:
    """One version of a resource: ``meta.versionId``, its status and ``meta.lastUpdated``."""

    vid: int
    status: str
    last_updated: datetime | None


def report_status(report_version: int | None) -> str:
    return "amended" if (report_version or 1) > 1 else "final"


def report_version(job: Job) -> Version:
    """The DiagnosticReport version ``job`` is (its findings, its issue time)."""
    vid = job.report_version or 1
    return Version(vid, report_status(vid), job.finished_at or job.updated_at)


def observation_versions(job: Job) -> list[Version]:
    """The versions of each Observation of ``job``, oldest first."""
    issued = Version(1, report_status(job.report_version), job.finished_at or job.updated_at)
    if job.superseded_at is None:
        return [issued]
    return [issued, Version(2, RETRACTED, job.superseded_at)]


def observation_version(job: Job, vid: int | None = None) -> Version | None:
    """Version ``vid`` (default: the current one) of ``job``'s Observations, if it exists."""
    versions = observation_versions(job)
    if vid is None:
        return versions[-1]
    return next((v for v in versions if v.vid == vid), None)


def meta(version: Version) -> dict[str, Any]:
    return {"versionId": str(version.vid), "lastUpdated": instant(version.last_updated)}


def etag(vid: int) -> str:
    return f'W/"{vid}"'


def etag_matches(if_none_match: str | None, vid: int) -> bool:
    """Whether an ``If-None-Match`` header names version ``vid`` (weak comparison, ``*``)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        value = tag.strip()
        if value == "*":
            return True
        if value.removeprefix("W/").strip('"') == str(vid):
            return True
    return False


def published() -> ColumnElement[bool]:
    """Jobs whose result is (or was) a version of a report."""
    return and_(Job.state == DONE, Job.report_version.is_not(None))


def current_report() -> ColumnElement[bool]:
    """Jobs whose result is the current version of their report."""
    return and_(published(), Job.superseded_at.is_(None))


def observation_last_updated() -> ColumnElement[Any]:
    """``meta.lastUpdated`` of an Observation's current version, as SQL."""
    return func.coalesce(Job.superseded_at, Job.finished_at)
