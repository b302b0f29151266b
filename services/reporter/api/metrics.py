"""Prometheus metrics computed from the database at scrape time (true across processes)."""

from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, distinct, func, select

from services.core import audit
from services.core.broker import Broker
from services.core.db import (
    AuditEvent,
    Database,
    Delivery,
    Instance,
    Job,
    JobState,
    Purge,
    Study,
)
from services.core.messages import INFERENCE_QUEUE, REPORTING_QUEUE

log = logging.getLogger(__name__)

BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TIMING_SAMPLE = 20_000  # most recent finished jobs feeding the stage histograms
#: Receiver refusals are counted over this trailing window (audit rows, indexed by time).
REFUSAL_WINDOW_SECONDS = 900
FINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.SKIPPED)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def refusal_kind(event: str, object_type: str, detail: str) -> str | None:
    """Which receiver refusal an audit row records, or None (not a receiver refusal). Pure.

    ``association``: an association rejected (AE title, allow-list); ``instance``: a data set
    refused as a security matter (unsafe UID, SOP Instance UID conflict); ``transfer``: an
    association in which instances were refused (0xA700 and the like)."""
    if event == audit.SECURITY_ALERT and detail.startswith("association rejected"):
        return "association"
    if event == audit.SECURITY_ALERT and detail.startswith("refused:"):
        return "instance"
    if event == audit.INSTANCES_TRANSFERRED and object_type == "study":
        return "transfer"
    return None


def stage_histograms(timings: list[dict[str, object]]) -> dict[str, tuple[list[int], float]]:
    """Per stage: cumulative bucket counts (incl. +Inf) and the sum of seconds. Pure."""
    out: dict[str, tuple[list[int], float]] = {}
    values: dict[str, list[float]] = defaultdict(list)
    for row in timings:
        for stage, seconds in (row or {}).items():
            if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
                values[str(stage)[:32]].append(float(seconds))
    for stage, samples in values.items():
        counts = [sum(1 for s in samples if s <= bound) for bound in BUCKETS]
        out[stage] = ([*counts, len(samples)], sum(samples))
    return out


class DatabaseCollector(Collector):
    def __init__(
        self, db: Database, broker: Broker | None = None, storage_dir: Path | None = None
    ) -> None:
        self.db = db
        self.broker = broker
        self.storage_dir = storage_dir

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("noduleflow_database_up", "Database reachable at scrape time")
        try:
            yield from self._from_database()
            up.add_metric([], 1)
        except Exception as exc:
            log.warning("event=metrics_database_error error=%s", type(exc).__name__)
            up.add_metric([], 0)
        yield up
        yield from self._queues()
        yield from self._storage()

    def _from_database(self) -> Iterator[Metric]:
        with self.db.session() as session:
            instances = session.scalar(select(func.count(Instance.id))) or 0
            stored = session.scalar(select(func.coalesce(func.sum(Instance.size), 0))) or 0
            purged, purged_bytes = session.execute(
                select(func.count(Purge.id), func.coalesce(func.sum(Purge.bytes), 0)).where(
                    Purge.finished_at.is_not(None)
                )
            ).one()
            studies = session.scalar(select(func.count(Study.id))) or 0
            completed = (
                session.scalar(
                    select(func.count(distinct(Job.study_id))).where(
                        Job.state == JobState.DONE.value
                    )
                )
                or 0
            )
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            deliveries = session.execute(
                select(Delivery.kind, Delivery.state, func.count()).group_by(
                    Delivery.kind, Delivery.state
                )
            ).all()
            timings = list(
                session.scalars(
                    select(Job.timings)
                    .where(Job.state == JobState.DONE.value)
                    .order_by(Job.finished_at.desc())
                    .limit(TIMING_SAMPLE)
                )
            )
            oldest_queued = session.scalar(
                select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED.value)
            )
            since = datetime.now(UTC) - timedelta(seconds=REFUSAL_WINDOW_SECONDS)
            prefix = case(
                (AuditEvent.detail.like("association rejected%"), "association rejected"),
                (AuditEvent.detail.like("refused:%"), "refused:"),
                else_="",
            )
            audit_rows = session.execute(
                select(AuditEvent.event, AuditEvent.object_type, prefix, func.count())
                .where(
                    AuditEvent.at >= since,
                    AuditEvent.outcome != "0",
                    AuditEvent.event.in_([audit.SECURITY_ALERT, audit.INSTANCES_TRANSFERRED]),
                )
                .group_by(AuditEvent.event, AuditEvent.object_type, prefix)
            ).all()
        yield CounterMetricFamily(
            "noduleflow_instances_received", "DICOM instances stored", value=instances
        )
        yield GaugeMetricFamily("noduleflow_studies", "Studies known", value=studies)
        yield GaugeMetricFamily(
            "noduleflow_stored_bytes", "Bytes of the stored (indexed) instances", value=stored
        )
        yield CounterMetricFamily(
            "noduleflow_purged_studies", "Studies whose images retention purged", value=purged
        )
        yield CounterMetricFamily(
            "noduleflow_purged_bytes", "Instance bytes retention purged", value=purged_bytes
        )
        yield CounterMetricFamily(
            "noduleflow_studies_completed", "Studies with a finished analysis", value=completed
        )
        by_state = GaugeMetricFamily("noduleflow_jobs", "Jobs by state", labels=["state"])
        for job_state in JobState:
            by_state.add_metric([job_state.value], jobs.get(job_state.value, 0))
        yield by_state
        finished = CounterMetricFamily(
            "noduleflow_jobs_finished", "Jobs that reached a final state", labels=["state"]
        )
        for job_state in FINAL_STATES:
            finished.add_metric([job_state.value], jobs.get(job_state.value, 0))
        yield finished
        age = 0.0
        if oldest_queued is not None:
            age = max(0.0, (datetime.now(UTC) - _utc(oldest_queued)).total_seconds())
        yield GaugeMetricFamily(
            "noduleflow_oldest_queued_job_seconds",
            "Age of the oldest job waiting for a worker (0 when none waits)",
            value=age,
        )
        refusals: dict[str, int] = {"association": 0, "instance": 0, "transfer": 0}
        for event, object_type, detail, count in audit_rows:
            kind = refusal_kind(event, object_type, detail)
            if kind is not None:
                refusals[kind] += int(count)
        refused = GaugeMetricFamily(
            "noduleflow_receiver_refusals",
            f"Receiver refusals in the last {REFUSAL_WINDOW_SECONDS} s, from the audit trail",
            labels=["kind"],
        )
        for kind, count in refusals.items():
            refused.add_metric([kind], count)
        yield refused
        gauge = GaugeMetricFamily(
            "noduleflow_deliveries", "Deliveries by kind and state", labels=["kind", "state"]
        )
        failed = 0
        for kind, state, count in deliveries:
            gauge.add_metric([kind, state], count)
            failed += count if state == "failed" else 0
        yield gauge
        yield CounterMetricFamily(
            "noduleflow_deliveries_failed", "Deliveries given up after retries", value=failed
        )
        histogram = HistogramMetricFamily(
            "noduleflow_stage_seconds",
            f"Per-stage job latency (last {TIMING_SAMPLE} finished jobs)",
            labels=["stage"],
        )
        for stage, (counts, total) in sorted(stage_histograms(timings).items()):
            buckets = [(str(b), c) for b, c in zip(BUCKETS, counts, strict=False)]
            buckets.append(("+Inf", counts[-1]))
            histogram.add_metric([stage], buckets, total)
        yield histogram

    def _queues(self) -> Iterator[Metric]:
        if self.broker is None:
            return
        depth = GaugeMetricFamily("noduleflow_queue_depth", "Messages waiting", labels=["queue"])
        dead = GaugeMetricFamily(
            "noduleflow_dead_letters", "Messages in the dead-letter queue", labels=["queue"]
        )
        for name in (INFERENCE_QUEUE, REPORTING_QUEUE):
            for family, queue in ((depth, name), (dead, f"{name}.dead")):
                try:
                    family.add_metric([name], self.broker.queue_depth(queue))
                except Exception as exc:
                    log.warning(
                        "event=metrics_queue_error queue=%s error=%s", queue, type(exc).__name__
                    )
        yield depth
        yield dead

    def _storage(self) -> Iterator[Metric]:
        if self.storage_dir is None:
            return
        try:
            disk = shutil.disk_usage(self.storage_dir)
        except OSError as exc:
            log.warning("event=metrics_storage_error error=%s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "noduleflow_storage_free_bytes", "Free bytes on the STORAGE_DIR volume", value=disk.free
        )
        yield GaugeMetricFamily(
            "noduleflow_storage_capacity_bytes",
            "Size of the STORAGE_DIR volume",
            value=disk.total,
        )


def make_registry(
    db: Database, broker: Broker | None, storage_dir: Path | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, broker, storage_dir))
    return registry
