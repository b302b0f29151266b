"""Per-process LRU of served reports, encoded: a finished report only changes when superseded.

The key holds everything a DiagnosticReport or its Observations are built from that can change
(report version, supersede time, issue time, the study's identifying fields), so a stale entry
is never hit.
Entries are validated by the fhir.resources models when built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from services.reporter.fhir.build import ReportInput, local_links, observation_json, report_json
from services.reporter.fhir.common import model_identity
from services.reporter.fhir.response import entry

MAX_ENTRIES = 10_000  # ~3-6 kB each
Encoded = tuple[str, str, bytes]


class ReportCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(data: ReportInput) -> tuple[Any, ...]:
        job, study = data.job, data.study
        return (
            job.id,
            job.finished_at,
            job.updated_at,
            model_identity(job.details, job.model_version),
            job.report_id,
            job.report_version,
            job.superseded_at,
            data.observation_vid,
            study.patient_key,
            study.accession_number,
            study.study_date,
            study.study_time,
            study.study_instance_uid,
            job.findings_count,
        )

    def cached_report(self, data: ReportInput) -> Encoded | None:
        """The report if cached (needs no findings loaded: the key does not depend on them)."""
        key = ("report", *self.key(data))
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit  # type: ignore[no-any-return]

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return value

    def report(self, data: ReportInput) -> Encoded:
        """The DiagnosticReport of one finished job: (type, id, JSON bytes)."""
        return self._cached(
            ("report", *self.key(data)), lambda: entry(report_json(data, local_links(data)))
        )

    def observations(self, data: ReportInput) -> list[Encoded]:
        """Its Observations, in finding order (built only when asked for)."""

        def build() -> list[Encoded]:
            links = local_links(data)
            return [entry(observation_json(data, f, links)) for f in data.findings]

        reviewed = tuple((i, r[-1].id, len(r)) for i, r in sorted(data.reviews.items()) if r)
        return self._cached(("observations", reviewed, *self.key(data)), build)
