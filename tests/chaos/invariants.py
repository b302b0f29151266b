"""What must hold after the storm (issue 17, part 5), each as a named check with counts.

1. Every acknowledged instance is on disk (content as indexed) and indexed once, in its study.
2. Every study has exactly one current report (its newest job ``done``, not superseded,
   the only such job, covering every acknowledged instance), or an actionable failure
   (``failed``/``skipped`` with a reason); no job is doubled (two jobs of one study over
   the same instances).
3. No delivery is lost: every row of a finished report is delivered, and the PACS holds
   each delivered instance.
4. No patient identifier is in any log.

The pure parts (:func:`doubled`, :func:`leaks`) are tested on their own.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from services.core.db import Database, Delivery, Instance, Job, JobState, Series, Study
from tests.chaos.traffic import Study as SentStudy


@dataclass(frozen=True)
class Check:
    name: str
    held: bool
    measured: str  # what was counted, e.g. "1440/1440 acknowledged instances"
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRow:
    study_uid: str
    version: int
    state: str
    reason: str
    instance_count: int
    current: bool = False  # done and not superseded: the study's current report


def doubled(jobs: Iterable[JobRow]) -> list[str]:
    """Studies with two jobs over the same instances (a second job for content that had
    one already; later versions must cover more instances)."""
    by_study: dict[str, list[JobRow]] = defaultdict(list)
    for job in jobs:
        by_study[job.study_uid].append(job)
    out = []
    for uid, rows in sorted(by_study.items()):
        counts = [r.instance_count for r in sorted(rows, key=lambda r: r.version)]
        if len(set(counts)) != len(counts):
            out.append(f"{uid}: jobs over {counts} instances")
    return out


def current_report(jobs: Sequence[JobRow], acked: int) -> str | None:
    """Why this study has no current report or actionable failure, or None when it has."""
    if not jobs:
        return "no job" if acked else None
    newest = max(jobs, key=lambda r: r.version)
    current = [r.version for r in jobs if r.current]
    if len(current) > 1:
        return f"{len(current)} current reports (versions {sorted(current)})"
    if newest.state == JobState.DONE.value:
        if current != [newest.version]:
            return f"newest job v{newest.version} is done but not the current report"
        if newest.instance_count < acked:
            return f"report covers {newest.instance_count} of {acked} acknowledged instances"
        return None
    if newest.state in (JobState.FAILED.value, JobState.SKIPPED.value):
        return None if newest.reason.strip() else f"{newest.state} without a reason"
    return f"newest job v{newest.version} still {newest.state}"


def leaks(logs: dict[str, str], needles: Iterable[str]) -> list[str]:
    """``file: needle`` for every needle found in a log's text."""
    wanted = [n for n in needles if n]
    return [f"{name}: {n!r}" for name, text in sorted(logs.items()) for n in wanted if n in text]


def check_instances(db: Database, storage: Path, studies: Sequence[SentStudy]) -> Check:
    acked = {sop: s.study_uid for s in studies for sop in s.acked_sops}
    problems = []
    with db.session() as session:
        rows = session.execute(
            select(
                Instance.sop_instance_uid, Instance.path, Instance.sha256, Study.study_instance_uid
            )
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        ).all()
    indexed: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for sop, path, sha, study_uid in rows:
        indexed[sop].append((path, sha, study_uid))
    good = 0
    for sop, study_uid in sorted(acked.items()):
        found = indexed.get(sop, [])
        if len(found) != 1:
            problems.append(f"{sop}: indexed {len(found)} times")
            continue
        path, sha, indexed_study = found[0]
        file = storage / path
        if indexed_study != study_uid:
            problems.append(f"{sop}: indexed in study {indexed_study}")
        elif not file.is_file():
            problems.append(f"{sop}: no file {path}")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != sha:
            problems.append(f"{sop}: file differs from its index row")
        else:
            good += 1
    return Check(
        "acknowledged instances on disk, indexed once",
        not problems,
        f"{good}/{len(acked)} instances",
        tuple(problems),
    )


def job_rows(db: Database) -> list[JobRow]:
    with db.session() as session:
        rows = session.execute(
            select(
                Study.study_instance_uid,
                Job.version,
                Job.state,
                Job.reason,
                Job.instance_count,
                Job.superseded_at,
            ).join(Study, Job.study_id == Study.id)
        ).all()
    return [
        JobRow(uid, version, state, reason, count, state == "done" and superseded is None)
        for uid, version, state, reason, count, superseded in rows
    ]


def check_reports(jobs: Sequence[JobRow], studies: Sequence[SentStudy]) -> Check:
    by_study: dict[str, list[JobRow]] = defaultdict(list)
    for job in jobs:
        by_study[job.study_uid].append(job)
    problems = []
    done = failed = 0
    for study in studies:
        rows = by_study.get(study.study_uid, [])
        why = current_report(rows, len(study.acked))
        if why is not None:
            problems.append(f"study {study.index}: {why}")
        elif rows:
            newest = max(rows, key=lambda r: r.version)
            done += newest.state == JobState.DONE.value
            failed += newest.state != JobState.DONE.value
    return Check(
        "one current report or an actionable failure per study",
        not problems,
        f"{done} reported, {failed} failed with a reason, of {len(studies)} studies",
        tuple(problems),
    )


def check_doubles(jobs: Sequence[JobRow]) -> Check:
    found = doubled(jobs)
    return Check(
        "no doubled job",
        not found,
        f"{len(found)} doubled, {len(jobs)} jobs",
        tuple(found),
    )


def pacs_sops(folder: Path) -> set[str]:
    out = set()
    for path in folder.iterdir():
        if path.is_file():
            out.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    return out


def check_deliveries(db: Database, pacs_folder: Path) -> Check:
    with db.session() as session:
        rows = session.execute(
            select(Delivery.kind, Delivery.state, Delivery.sop_instance_uid, Delivery.last_error)
            .join(Job, Delivery.job_id == Job.id)
            .where(Job.state == JobState.DONE.value)
        ).all()
    received = pacs_sops(pacs_folder)
    problems = []
    delivered = 0
    for kind, state, sop, error in rows:
        if state != "delivered":
            problems.append(f"{kind} {sop}: {state} {error[:80]}")
        elif sop and sop not in received:
            problems.append(f"{kind} {sop}: delivered but not in the PACS")
        else:
            delivered += 1
    return Check(
        "no delivery lost",
        not problems,
        f"{delivered}/{len(rows)} deliveries in the PACS",
        tuple(problems),
    )


def check_logs(log_files: Iterable[Path], studies: Sequence[SentStudy]) -> Check:
    texts = {p.name: p.read_text(errors="replace") for p in log_files if p.is_file()}
    needles = [n for s in studies for n in s.patient.needles]
    found = leaks(texts, needles)
    lines = sum(t.count("\n") for t in texts.values())
    return Check(
        "no patient identifier in any log",
        not found,
        f"{len(found)} found in {lines} lines of {len(texts)} logs",
        tuple(found),
    )


def versions_note(jobs: Iterable[JobRow], studies: Sequence[SentStudy]) -> str:
    """How many studies ended with more than one job (a new version: instances that came
    after the study was complete), apart for studies split across both receivers and for
    studies sent whole in one association that was never cut."""
    count: dict[str, int] = defaultdict(int)
    for job in jobs:
        count[job.study_uid] += 1
    groups = {
        "split across both receivers": [s for s in studies if s.split],
        "sent whole, retried": [s for s in studies if not s.split and s.attempts > 1],
        "sent whole, at once": [s for s in studies if not s.split and s.attempts <= 1],
    }
    parts = [
        f"{sum(count[s.study_uid] > 1 for s in group)} of {len(group)} {name}"
        for name, group in groups.items()
        if group
    ]
    return "studies with more than one job: " + ", ".join(parts)
