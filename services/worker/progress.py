"""Job progress from the pipeline's ``progress(stage, fraction)`` reports."""

from __future__ import annotations

import logging
import time

from services.core.db import Database
from services.worker import store
from services.worker.faults import Faults

log = logging.getLogger(__name__)

# Share of the whole job each pipeline stage covers, as (start, width) of ``jobs.progress``.
_STAGES = {"read": (0.0, 0.3), "inference": (0.3, 0.65), "postprocess": (0.95, 0.05)}


def overall_progress(stage: str, fraction: float) -> float:
    """The job's progress in [0, 1] from a pipeline ``(stage, fraction)`` report."""
    start, width = _STAGES.get(stage, (0.0, 0.0))
    return round(start + width * min(max(float(fraction), 0.0), 1.0), 4)


class JobProgress:
    """``progress(stage, fraction)`` for the pipeline: throttled writes of ``jobs.progress``.

    Raises ``ClaimLost`` inside the pipeline when another attempt has taken the job over,
    which stops work whose result could not be committed anyway. A failed write (database
    briefly away) is skipped: progress is informative, the result commit is what counts.
    """

    def __init__(
        self, db: Database, claim: store.Claim, faults: Faults, *, interval: float = 0.5
    ) -> None:
        self.db = db
        self.claim = claim
        self.faults = faults
        self.interval = interval
        self.last = 0.0
        self.inferring = False

    def __call__(self, stage: str, fraction: float) -> None:
        if stage == "inference" and not self.inferring:
            self.inferring = True
            self.faults.hit("mid_infer", self.claim.job_id)
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        try:
            owned = store.progress(self.db, self.claim, overall_progress(stage, fraction))
        except Exception:
            log.debug("event=progress_write_failed job=%s", self.claim.job_id, exc_info=True)
            return
        if not owned:
            raise store.ClaimLost(self.claim.job_id)
