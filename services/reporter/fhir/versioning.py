"""The FHIR face of report versions (:mod:`services.reporter.versions`).

* DiagnosticReport ``<report id>``: version *k* is the study's *k*-th published analysis,
  status ``final`` for the first and ``amended`` after; ``lastUpdated`` is when that analysis
  finished. Only the current version is found by search and read.
* Observation ``<job id>-<index>``: version 1 as its analysis issued it; then one version
  per radiologist review of the finding (``FindingReview``: accepted keeps the issued status,
  rejected is ``entered-in-error``; each carries the decision as a note); when a later
  analysis supersedes that one, a last version ``entered-in-error``, last updated at that
  moment. A client that counts current Observations (or the current report's results) never
  counts a finding twice, nor one a radiologist rejected.
* ETags are weak, ``W/"<versionId>"`` (FHIR http "Managing Resource Contention").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select

from services.core.db import Finding, FindingReview, Job, JobState
from services.reporter.fhir.common import instant

DONE = JobState.DONE.value
RETRACTED = "entered-in-error"


@dataclass(frozen=True)
class Version:
    """One version of a resource: ``meta.versionId``, its status and ``meta.lastUpdated``."""

    vid: int
    status: str
    last_updated: datetime | None
    # the finding's latest review up to this version (its note), if any
    review: FindingReview | None = None


def report_status(report_version: int | None) -> str:
    return "amended" if (report_version or 1) > 1 else "final"


def report_version(job: Job) -> Version:
    """The DiagnosticReport version ``job`` is (its findings, its issue time)."""
    vid = job.report_version or 1
    return Version(vid, report_status(vid), job.finished_at or job.updated_at)


REJECTED = "rejected"


def observation_versions(job: Job, reviews: Sequence[FindingReview] = ()) -> list[Version]:
    """The versions of one Observation of ``job`` whose finding has ``reviews`` (oldest
    first), oldest first."""
    issued_status = report_status(job.report_version)
    versions = [Version(1, issued_status, job.finished_at or job.updated_at)]
    for review in reviews:
        status = RETRACTED if review.decision == REJECTED else issued_status
        versions.append(Version(len(versions) + 1, status, review.at, review))
    if job.superseded_at is not None:
        last = versions[-1].review
        versions.append(Version(len(versions) + 1, RETRACTED, job.superseded_at, last))
    return versions


def observation_version(
    job: Job, vid: int | None = None, reviews: Sequence[FindingReview] = ()
) -> Version | None:
    """Version ``vid`` (default: the current one) of an Observation of ``job``, if it exists."""
    versions = observation_versions(job, reviews)
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


def last_review_at() -> Any:
    """When the finding (``Finding``) was last reviewed, as a correlated SQL subquery."""
    return (
        select(func.max(FindingReview.at))
        .where(FindingReview.finding_id == Finding.id)
        .correlate(Finding)
        .scalar_subquery()
    )


def latest_decision() -> Any:
    """The latest review decision of the finding (``Finding``), "" if none, as SQL."""
    latest = (
        select(FindingReview.decision)
        .where(FindingReview.finding_id == Finding.id)
        .correlate(Finding)
        .order_by(FindingReview.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return func.coalesce(latest, "")


def rejected() -> ColumnElement[bool]:
    """Findings (``Finding``) whose latest review rejects them, as SQL."""
    return latest_decision() == REJECTED


def observation_last_updated() -> ColumnElement[Any]:
    """``meta.lastUpdated`` of an Observation's current version, as SQL (a supersede comes
    after every review, a review after the issue)."""
    return func.coalesce(Job.superseded_at, last_review_at(), Job.finished_at)
