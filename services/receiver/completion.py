"""When a study is complete, and how complete it is: pure policies of the study tracker.

A study is *stable* when its sender has gone quiet by the rule of its calling AE
(:class:`~services.core.settings.StabilityRule`: Orthanc's ``StableAge``, and optionally a
short grace after the associations carrying it were released). Stable is not yet complete:

* a CT series with a gap (slice positions further apart than the series' own step, or, for
  series without positions, missing instance numbers) waits up to ``gap_wait_seconds``
  after its last instance for the missing slices;
* a study the receiver *knows* is incomplete (it refused instances with 0xA700 that were
  not stored since, or a receiver restart cut an association carrying it) waits up to
  ``incomplete_wait_seconds`` for the sender to resend.

Whatever still misses then is analysed as it is, with a :class:`Completeness` that says
``partial`` and names the missing z ranges; the reports carry it. With
``min_lung_coverage_mm`` set, a CT series shorter than that along the slice normal (the
first half of a study whose sender paused) also waits ``gap_wait_seconds`` for more slices,
and is then analysed with a "short slab" flag (a limited scan is not an incomplete one).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.core.settings import StabilityRule

#: a step longer than this many times the series' median step is a gap
GAP_FACTOR = 1.5
MIN_POSITIONS = 3


def utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every timestamp we write is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StudyClock:
    """The completion-relevant timestamps of one pending study."""

    last_received_at: datetime
    open_associations: int
    last_released_at: datetime | None


def rule_for(
    calling_aets: Iterable[str], rules: Mapping[str, StabilityRule], default: StabilityRule
) -> StabilityRule:
    """The strictest rule among the AEs that sent the study: the longest stable age, and a
    release grace only if every sender's rule has one (the longest)."""
    chosen = [rules.get(aet.strip(), default) for aet in calling_aets] or [default]
    graces = [rule.release_grace_seconds for rule in chosen]
    return StabilityRule(
        stable_age_seconds=max(rule.stable_age_seconds for rule in chosen),
        release_grace_seconds=None if None in graces else max(g for g in graces if g is not None),
    )


def stable_reason(clock: StudyClock, rule: StabilityRule, now: datetime) -> str | None:
    """``"idle"``, ``"released"`` or None (the sender may still be sending)."""
    last = utc(clock.last_received_at)
    if now - last >= timedelta(seconds=rule.stable_age_seconds):
        return "idle"
    released = utc(clock.last_released_at) if clock.last_released_at is not None else None
    if (
        rule.release_grace_seconds is not None
        and clock.open_associations <= 0
        and released is not None
        and released >= last
        and now - released >= timedelta(seconds=rule.release_grace_seconds)
    ):
        return "released"
    return None


@dataclass(frozen=True)
class SeriesSlices:
    """One CT series as stored: slice positions (mm along the normal) and instance numbers."""

    series_instance_uid: str
    positions: tuple[float, ...] = ()
    numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class SeriesGaps:
    """What one series misses: z ranges (first and last missing slice position) or, for a
    series without positions, instance numbers; its step and its coverage."""

    series_instance_uid: str
    missing_z_mm: tuple[tuple[float, float], ...] = ()
    missing_numbers: tuple[int, ...] = ()
    step_mm: float | None = None
    coverage_mm: float | None = None

    @property
    def has_gaps(self) -> bool:
        return bool(self.missing_z_mm or self.missing_numbers)

    @property
    def missing_slices(self) -> int:
        if self.missing_numbers:
            return len(self.missing_numbers)
        if not self.step_mm:
            return 0
        return sum(round((hi - lo) / self.step_mm) + 1 for lo, hi in self.missing_z_mm)


def series_gaps(series: SeriesSlices) -> SeriesGaps:
    """Gaps of one series: by position when at least three slices have one, else by number."""
    positions = sorted(set(round(p, 2) for p in series.positions))
    if len(positions) >= MIN_POSITIONS:
        steps = [b - a for a, b in itertools.pairwise(positions)]
        step = statistics.median(steps)
        if step <= 0.01:
            return SeriesGaps(series.series_instance_uid)
        missing = tuple(
            (round(a + step, 2), round(b - step, 2))
            for a, b, s in zip(positions, positions[1:], steps, strict=False)
            if s > GAP_FACTOR * step
        )
        return SeriesGaps(
            series.series_instance_uid,
            missing_z_mm=missing,
            step_mm=round(step, 3),
            coverage_mm=round(positions[-1] - positions[0], 1),
        )
    numbers = sorted(set(series.numbers))
    holes = tuple(sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else ())
    return SeriesGaps(series.series_instance_uid, missing_numbers=holes)


@dataclass(frozen=True)
class Evidence:
    """What the receiver knows about a stable study's completeness."""

    series: tuple[SeriesSlices, ...] = ()
    #: positions of refused instances (0xA700) not stored since (None: position unknown)
    refused: tuple[float | None, ...] = ()
    interrupted: bool = False


@dataclass(frozen=True)
class Completeness:
    """A job's completeness as the reports show it (``jobs.completeness``)."""

    partial: bool = False
    reasons: tuple[str, ...] = ()
    missing_z_mm: tuple[tuple[float, float], ...] = ()
    coverage_mm: float | None = None
    flags: tuple[str, ...] = field(default=())

    def to_stored(self) -> dict[str, Any]:
        return {
            "status": "partial" if self.partial else "complete",
            "reasons": list(self.reasons),
            "missing_z_mm": [list(r) for r in self.missing_z_mm],
            "coverage_mm": self.coverage_mm,
            "flags": list(self.flags),
            "summary": self.summary(),  # what the reports say (the reporter reads only this)
        }

    @classmethod
    def parse(cls, stored: Mapping[str, Any] | None) -> Completeness:
        """Read ``jobs.completeness``; {} (older rows) is complete. Never fails."""
        data = dict(stored or {})
        try:
            ranges = tuple((float(a), float(b)) for a, b in data.get("missing_z_mm") or ())
            coverage = data.get("coverage_mm")
            return cls(
                partial=data.get("status") == "partial",
                reasons=tuple(str(r) for r in data.get("reasons") or ()),
                missing_z_mm=ranges,
                coverage_mm=None if coverage is None else float(coverage),
                flags=tuple(str(f) for f in data.get("flags") or ()),
            )
        except (TypeError, ValueError):
            return cls(partial=data.get("status") == "partial")

    def summary(self) -> str:
        """One sentence for people (SR text, FHIR conclusion, worklist); "" when complete and
        not flagged."""
        parts = []
        if self.partial:
            ranges = ", ".join(f"z {lo:.1f} to {hi:.1f} mm" for lo, hi in self.missing_z_mm)
            text = "Incomplete study: " + "; ".join(self.reasons)
            parts.append(f"{text}. Not received: {ranges}." if ranges else f"{text}.")
        parts.extend(f"{flag}." for flag in self.flags)
        return " ".join(parts)


def _merge(ranges: Sequence[tuple[float, float]], tolerance: float) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(ranges):
        if merged and lo - merged[-1][1] <= tolerance:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def assess(evidence: Evidence, *, min_lung_coverage_mm: float) -> Completeness:
    """The completeness the evidence shows, were the study analysed now."""
    gaps = [series_gaps(s) for s in evidence.series]
    main = max(gaps, key=lambda g: g.coverage_mm or 0.0, default=None)
    step = main.step_mm if main is not None and main.step_mm else 1.0
    ranges = [r for g in gaps for r in g.missing_z_mm]
    ranges += [(p, p) for p in evidence.refused if p is not None]
    reasons = []
    gapped = [g for g in gaps if g.has_gaps]
    if gapped:
        count = sum(g.missing_slices for g in gapped)
        reasons.append(f"{count} slices missing in {len(gapped)} series")
    if evidence.refused:
        reasons.append(f"{len(evidence.refused)} instances refused (out of resources), not resent")
    if evidence.interrupted:
        reasons.append("a transfer was cut by a receiver restart and not completed since")
    flags = []
    coverage = main.coverage_mm if main is not None else None
    if coverage is not None and coverage < min_lung_coverage_mm:
        flags.append(
            f"Short slab: the series covers {coverage:.0f} mm, less than the "
            f"{min_lung_coverage_mm:.0f} mm the lungs need"
        )
    return Completeness(
        partial=bool(reasons),
        reasons=tuple(reasons),
        missing_z_mm=tuple((round(a, 1), round(b, 1)) for a, b in _merge(ranges, 1.5 * step)),
        coverage_mm=coverage,
        flags=tuple(flags),
    )


@dataclass(frozen=True)
class Decision:
    """A study to complete now: why (``idle``/``released``, ``…-waited`` after a bounded
    wait for missing slices) and how complete it is."""

    reason: str
    completeness: Completeness


@dataclass(frozen=True)
class Waits:
    """The bounded waits for missing data, in seconds after the last instance."""

    gap_seconds: float
    incomplete_seconds: float
    min_lung_coverage_mm: float = 0.0


def decide(
    clock: StudyClock,
    rule: StabilityRule,
    evidence: Evidence,
    now: datetime,
    waits: Waits,
) -> Decision | None:
    """Complete now (a :class:`Decision`) or keep waiting (None)."""
    reason = stable_reason(clock, rule, now)
    if reason is None:
        return None
    completeness = assess(evidence, min_lung_coverage_mm=waits.min_lung_coverage_mm)
    if not completeness.partial and not completeness.flags:
        return Decision(reason, completeness)
    known = bool(evidence.refused) or evidence.interrupted
    bound = max(waits.incomplete_seconds if known else 0.0, waits.gap_seconds)
    if now - utc(clock.last_received_at) < timedelta(seconds=bound):
        return None
    return Decision(f"{reason}-waited", completeness)
