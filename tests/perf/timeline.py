"""Pure arithmetic of the turnaround and burst benchmarks: stages, anchors, memory growth.

Times are epoch seconds (UTC). The database's timestamps (naive in SQLite, UTC) and the
benchmark's own observations (Orthanc arrival, FHIR readable) share that clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# The anchors the issue names: how long other nodes wait before they call a study complete.
ANCHORS = {"MONAI Informatics Gateway (5 s)": 5.0, "mercure / Orthanc StableAge (60 s)": 60.0}
TARGET_SR_SECONDS = 20.0  # last image acknowledged → SR in the PACS, 300 slices, 2 cores
INFERENCE = "analysis"


@dataclass(frozen=True)
class StudyTimes:
    """When one study passed each point on its way through the node (epoch seconds)."""

    last_ack: float  # newest instance row: durable and indexed, answered with success
    complete: float  # the job row, created by the tracker with its StudyReady
    queued: float  # StudyReady published by the outbox relay
    analysis_start: float  # the worker's claim plus its file checks
    analysis_end: float  # findings made, before the result commit
    report_start: float  # the reporter took the result
    done: float  # SR, SEG, key images and KOS written, delivery rows committed
    sr_in_pacs: float  # the SR seen in Orthanc
    all_in_pacs: float  # every artefact seen in Orthanc
    fhir_readable: float  # GET /fhir/DiagnosticReport/{id} answered 200


# (name, from, to): consecutive, so they add up to last_ack → all_in_pacs.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("completion wait", "last_ack", "complete"),
    ("study.ready relay", "complete", "queued"),
    ("worker pick-up", "queued", "analysis_start"),
    (INFERENCE, "analysis_start", "analysis_end"),
    ("result commit + relay + reporter pick-up", "analysis_end", "report_start"),
    ("report build (SR/SEG/key images/KOS)", "report_start", "done"),
    ("SR C-STORE into Orthanc", "done", "sr_in_pacs"),
    ("other artefacts into Orthanc", "sr_in_pacs", "all_in_pacs"),
)


def epoch(value: datetime) -> float:
    """Epoch seconds of a database timestamp; a naive one is UTC (how the models write)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def claim_times(created: float, timings: Mapping[str, object]) -> tuple[float, float]:
    """Analysis start and end from the job's creation and the worker's recorded timings
    (``queued``: creation → claim; ``load``: claim → files checked; ``total``: claim →
    findings)."""
    try:
        queued, load, total = (float(timings[k]) for k in ("queued", "load", "total"))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"job timings lack queued/load/total: {dict(timings)}") from exc
    claimed = created + queued
    return claimed + load, claimed + total


def stages(times: StudyTimes) -> list[tuple[str, float]]:
    """Seconds per stage, in order."""
    return [(name, getattr(times, end) - getattr(times, start)) for name, start, end in STAGES]


def slowest_non_inference(times: StudyTimes) -> tuple[str, float]:
    return max(((n, s) for n, s in stages(times) if n != INFERENCE), key=lambda item: item[1])


def totals(times: StudyTimes) -> dict[str, float]:
    return {
        "last image → SR in Orthanc": times.sr_in_pacs - times.last_ack,
        "last image → all artefacts in Orthanc": times.all_in_pacs - times.last_ack,
        "last image → FHIR report readable": times.fhir_readable - times.last_ack,
    }


def anchor_ratios(completion_wait: float) -> dict[str, float]:
    """Our completion wait over each anchor's (below 1: we call the study complete sooner)."""
    return {name: completion_wait / seconds for name, seconds in ANCHORS.items()}


def value_at(samples: Sequence[tuple[float, float]], when: float) -> float:
    """The first sample taken at or after ``when`` (the last one if none is)."""
    if not samples:
        raise ValueError("no samples")
    for t, value in samples:
        if t >= when:
            return value
    return samples[-1][1]


def growth(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Relative change of a sampled value (RSS) between two moments."""
    before, after = value_at(samples, start), value_at(samples, end)
    if before <= 0:
        raise ValueError("cannot measure growth from zero")
    return (after - before) / before


def per_hour(count: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("elapsed time must be positive")
    return 3600.0 * count / seconds


def cpu_bound_ratio(cores: int, busy: float, anchor: float, cpu_per_study: float) -> float:
    """The burst's ratio to the pipeline alone when the machine is the limit: ``cores`` busy
    ``busy`` of the time (0–1) deliver one study per ``cpu_per_study`` CPU seconds, against
    one per ``anchor`` seconds alone. It equals the measured ratio when the watched window is
    the burst; it shows what moves it: the anchor's wall seconds against everything a study
    costs the machine."""
    if cores < 1 or not 0 < busy <= 1 or anchor <= 0 or cpu_per_study <= 0:
        raise ValueError("cores, busy share, anchor and CPU per study must be positive")
    return cores * busy * anchor / cpu_per_study
