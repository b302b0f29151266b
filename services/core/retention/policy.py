"""What to purge, decided from facts alone (no I/O): a pure policy.

A study may be purged only when it is *finished*: it has at least one job, every job is
final (``done``, ``failed``, ``skipped``), nothing is being received for it (no pending
completion, no open association) and every delivery of its results has ended
(``delivered``, ``written`` or ``failed``; none ``pending``). Finished studies are taken
oldest-finished-first: first every study older than the maximum age, then, while storage
is above the high-water mark, more of the oldest until it would be at the low-water target.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

#: Delivery states after which the artefact is no longer needed for sending.
DELIVERY_ENDED = frozenset({"delivered", "written", "failed"})
#: Job states that are final (``core.db.JobState.final``).
JOB_FINAL = frozenset({"done", "failed", "skipped"})

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class Reason(enum.StrEnum):
    """Why a study is purged."""

    MAX_AGE = "max-age"
    HIGH_WATER = "high-water"


class Blocked(enum.StrEnum):
    """Why a study is kept whatever the pressure."""

    RECEIVING = "receiving"  # no job yet, completion pending, or an association open
    IN_FLIGHT = "in-flight"  # a job is queued, inferring or reporting
    UNDELIVERED = "undelivered"  # a delivery of its results is still pending
    PURGING = "purging"  # a purge of it started and has not finished (resumed first)
    EMPTY = "empty"  # no stored instances (purged already)


@dataclass(frozen=True)
class Watermark:
    """A storage level: a number of bytes, or a percentage of the file system."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str, *, name: str = "watermark") -> Watermark | None:
        """``"85%"``, ``"500GB"``, ``"1.5TiB"``, ``"1048576"`` (bytes); "" is None.

        Units: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (powers of 1024)."""
        if not text.strip():
            return None
        match = _PERCENT.match(text)
        if match:
            value = float(match.group(1))
            if not 0 < value <= 100:
                raise ValueError(f"{name}: a percentage must be in (0, 100], got {text!r}")
            return cls(value, percent=True)
        match = _SIZE.match(text)
        unit = match.group(2).upper() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name}: expected a size such as 500GB, 1.5TiB or 1048576, "
                f"or a percentage such as 85%, got {text!r}"
            )
        value = float(match.group(1)) * _UNITS[unit]
        if value <= 0:
            raise ValueError(f"{name}: must be above zero, got {text!r}")
        return cls(value, percent=False)

    def limit(self, capacity: int) -> int:
        """The level in bytes; a percentage is of ``capacity`` (the file system's size)."""
        return int(capacity * self.value / 100) if self.percent else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)} bytes"


@dataclass(frozen=True)
class RetentionPolicy:
    """Maximum age and the high/low-water marks; both marks in the same kind of unit."""

    max_age: timedelta | None = None
    high_water: Watermark | None = None
    low_water: Watermark | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError("maximum age must be above zero")
        if self.low_water is not None and self.high_water is None:
            raise ValueError("a low-water target needs a high-water mark")
        if self.high_water is not None and self.low_water is not None:
            if self.low_water.percent != self.high_water.percent:
                raise ValueError("high- and low-water marks must both be sizes or percentages")
            if self.low_water.value > self.high_water.value:
                raise ValueError("the low-water target must not be above the high-water mark")

    @property
    def enabled(self) -> bool:
        return self.max_age is not None or self.high_water is not None

    @property
    def target(self) -> Watermark | None:
        """Where a purge for space stops: the low-water mark, else 90 % of the high-water."""
        if self.high_water is None:
            return None
        return self.low_water or Watermark(self.high_water.value * 0.9, self.high_water.percent)

    @property
    def percent(self) -> bool:
        return self.high_water is not None and self.high_water.percent


@dataclass(frozen=True)
class Usage:
    """Storage in use: ``used`` bytes of ``capacity`` (the file system's size for
    percentage marks; for size marks, the bytes of stored instances and capacity 0)."""

    used: int
    capacity: int = 0


@dataclass(frozen=True)
class StudyFacts:
    """What the policy knows of one study (read by :mod:`.survey`)."""

    study_id: int
    study_instance_uid: str
    last_received_at: datetime
    finished_at: datetime | None  # the latest job's end; None without a final job
    instances: int
    bytes: int  # of its stored instances
    jobs: int = 0
    jobs_open: int = 0  # jobs not final
    deliveries_pending: int = 0
    receiving: bool = False  # completion pending or an association open
    purging: bool = False  # an unfinished purge journal row


def blocked(study: StudyFacts) -> Blocked | None:
    """Why ``study`` must be kept, or None when it is finished and may be purged."""
    if study.purging:
        return Blocked.PURGING
    if study.receiving or study.jobs == 0:
        return Blocked.RECEIVING
    if study.jobs_open:
        return Blocked.IN_FLIGHT
    if study.deliveries_pending:
        return Blocked.UNDELIVERED
    if study.instances == 0:
        return Blocked.EMPTY
    return None


@dataclass(frozen=True)
class Choice:
    """One study to purge, why, and what it frees."""

    study: StudyFacts
    reason: Reason
    age: timedelta
    bytes: int


@dataclass(frozen=True)
class Plan:
    """The policy's answer: studies to purge in order, what was kept and why, and usage."""

    choices: list[Choice]
    kept: dict[Blocked, int] = field(default_factory=dict)
    used: int = 0
    high_water: int | None = None  # bytes
    target: int | None = None  # bytes
    projected: int = 0  # used after the purge (estimated from instance sizes)

    @property
    def short_of_target(self) -> bool:
        """Above the high-water mark even after purging everything that may be purged."""
        return (
            self.high_water is not None
            and self.target is not None
            and (self.used > self.high_water and self.projected > self.target)
        )


def aware(value: datetime) -> datetime:
    """``value`` as an aware datetime (SQLite hands back naive UTC ones)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _finished(study: StudyFacts) -> datetime:
    """When the study's last job ended (its last receipt when no job has an end time)."""
    return aware(study.finished_at or study.last_received_at)


def choose(
    studies: list[StudyFacts], *, now: datetime, policy: RetentionPolicy, usage: Usage
) -> Plan:
    """The studies to purge, oldest finished first.

    Every finished study older than ``policy.max_age`` (age since its last job ended) is
    chosen for ``max-age``. When ``usage.used`` is above the high-water mark, further
    finished studies are chosen, oldest first, for ``high-water`` until the projected use
    is at or below the low-water target. A study that is receiving, in flight, not yet
    delivered or being purged is never chosen.
    """
    kept: dict[Blocked, int] = {}
    finished: list[StudyFacts] = []
    for study in studies:
        why = blocked(study)
        if why is None:
            finished.append(study)
        else:
            kept[why] = kept.get(why, 0) + 1
    finished.sort(key=lambda s: (_finished(s), s.study_id))
    high = policy.high_water.limit(usage.capacity) if policy.high_water else None
    target_mark = policy.target
    target = target_mark.limit(usage.capacity) if target_mark else None
    over = high is not None and usage.used > high
    projected = usage.used
    choices: list[Choice] = []
    for study in finished:
        age = max(now - _finished(study), timedelta(0))
        if policy.max_age is not None and age >= policy.max_age:
            reason = Reason.MAX_AGE
        elif over and target is not None and projected > target:
            reason = Reason.HIGH_WATER
        else:
            break  # younger studies follow; nothing more is due
        choices.append(Choice(study=study, reason=reason, age=age, bytes=study.bytes))
        projected -= study.bytes
    return Plan(
        choices=choices,
        kept=kept,
        used=usage.used,
        high_water=high,
        target=target,
        projected=max(projected, 0),
    )
