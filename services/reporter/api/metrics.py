"""Prometheus metrics computed from the database at scrape time (true across processes)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import distinct, func, select

from services.core.broker import Broker
from services.core.db import Database, Delivery, Instance, Job, JobState, Purge, Study
from services.core.messages import INFERENCE_QUEUE, REPORTING_QUEUE

log = logging.getLogger(__name__)

BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TIMING_SAMPLE = 20_000  # most recent finished jobs feeding the stage histograms


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
    def __init__(self, db: Database, broker: Broker | None = None) -> None:
        self.db = db
        self.broker = broker

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
        for name in (INFERENCE_QUEUE, REPORTING_QUEUE):
            try:
                depth.add_metric([name], self.broker.queue_depth(name))
            except Exception as exc:
                log.warning("event=metrics_queue_error queue=%s error=%s", name, type(exc).__name__)
        yield depth


def make_registry(db: Database, broker: Broker | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, broker))
    return registry
