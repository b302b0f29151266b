"""One StudyReady message → one job attempt: claim, analyse, commit, publish, verdict.

The handler is idempotent by job id: a redelivered message for a job whose results are
already committed only (re)publishes the committed StudyResult and is acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.core.broker import Delivered, Verdict
from services.core.db import Database, JobState
from services.core.messages import StudyReady
from services.core.outbox import Relay
from services.core.storage import LocalStorage
from services.worker import results, store
from services.worker.faults import Faults
from services.worker.policy import (
    Action,
    BadMessage,
    RetryPolicy,
    StorageUnavailable,
    StudyUnusable,
)

log = logging.getLogger(__name__)

Analyze = Callable[..., Any]  # (paths, engine, *, progress(stage, fraction)) -> result


def default_analyze(paths: Sequence[Path], engine: Any, *, progress: Any = None) -> Any:
    """The analysis pipeline, with its permanent errors mapped to ``StudyUnusable``."""
    from services.analysis.errors import AnalysisError
    from services.analysis.pipeline import analyze_files

    try:
        return analyze_files(list(paths), engine, progress=progress)
    except AnalysisError as exc:
        raise StudyUnusable(exc.code, exc.message, skip=exc.skip) from exc


def parse(delivered: Delivered) -> StudyReady:
    try:
        message = StudyReady.model_validate_json(delivered.body)
    except ValidationError as exc:
        raise BadMessage(f"not a StudyReady v1 body ({exc.error_count()} errors)") from None
    if delivered.message_id and delivered.message_id != message.job_id:
        raise BadMessage("message_id does not match job_id")
    return message


class JobHandler:
    """``handler(Delivered) -> Verdict`` for the inference queue."""

    def __init__(
        self,
        db: Database,
        storage: LocalStorage,
        engine: Any,
        relay: Relay,
        *,
        policy: RetryPolicy,
        worker_id: str,
        stop: threading.Event | None = None,
        analyze: Analyze = default_analyze,
        faults: Faults | None = None,
        progress_interval: float = 0.5,
    ) -> None:
        self.db = db
        self.storage = storage
        self.engine = engine
        self.relay = relay
        self.policy = policy
        self.worker_id = worker_id
        self.stop = stop or threading.Event()
        self.analyze = analyze
        self.faults = faults or Faults("")
        self.progress_interval = progress_interval

    def __call__(self, delivered: Delivered) -> Verdict:
        try:
            message = parse(delivered)
        except BadMessage as exc:
            log.error("event=job_rejected message_id=%s reason=%s", delivered.message_id[:64], exc)
            return Verdict.REJECT
        started = time.perf_counter()
        claim: store.Claim | None = None
        try:
            outcome = store.claim(
                self.db,
                message.job_id,
                message.study_instance_uid,
                [ref.uid for ref in message.series],
                max_attempts=self.policy.max_attempts,
                worker=self.worker_id,
            )
            if isinstance(outcome, store.Ended):
                log.info(
                    "event=job_not_run job=%s state=%s note=%s",
                    message.job_id,
                    outcome.state,
                    outcome.note,
                )
                self._publish(message.job_id)
                return Verdict.ACK
            claim = outcome
            log.info(
                "event=job_claimed job=%s attempt=%d instances=%d redelivered=%s",
                claim.job_id,
                claim.attempt,
                len(claim.paths),
                delivered.redelivered,
            )
            self.faults.hit("after_claim")
            self._run(claim, started)
        except store.ClaimLost:
            log.warning("event=job_taken_over job=%s", message.job_id)
            return Verdict.ACK  # a newer attempt owns the job and its own delivery
        except Exception as exc:
            return self._failed(message, delivered, claim, exc)
        self._publish(message.job_id)
        self.faults.hit("after_publish")
        return Verdict.ACK

    # ------------------------------------------------------------------ the work

    def _paths(self, claim: store.Claim) -> list[Path]:
        if not claim.paths:
            raise StudyUnusable("no-usable-series", "the study has no stored instances", skip=True)
        paths = [self.storage.path(key) for key in claim.paths]
        missing = sum(1 for path in paths if not path.is_file())
        if missing:
            raise StorageUnavailable(f"{missing} of {len(paths)} instance files not readable")
        return paths

    def _run(self, claim: store.Claim, started: float) -> None:
        paths = self._paths(claim)
        load = time.perf_counter() - started
        reporter = _Progress(self, claim)
        result = self.analyze(paths, self.engine, progress=reporter)
        analysed = time.perf_counter()
        rows = results.finding_rows(result.findings)
        details = results.job_details(result, worker=self.worker_id, attempt=claim.attempt)
        self.faults.hit("before_commit")
        timings = results.stage_timings(
            result.timings, load=load, total=time.perf_counter() - started
        )
        store.commit_result(
            self.db,
            claim,
            rows,
            details=details,
            timings=timings,
            model_version=details["model"]["version"],
        )
        log.info(
            "event=job_committed job=%s findings=%d provider=%s analysis_s=%.2f total_s=%.2f",
            claim.job_id,
            len(rows),
            details["provider"],
            analysed - started - load,
            time.perf_counter() - started,
        )
        self.faults.hit("after_commit")

    def _publish(self, job_id: str) -> None:
        """Publish the job's committed StudyResult now; the background relay retries."""
        try:
            self.relay.relay_once(message_id=job_id)
        except Exception:
            log.warning("event=result_publish_deferred job=%s", job_id, exc_info=True)
        self.relay.wake.set()

    # ------------------------------------------------------------------ failures

    def _failed(
        self,
        message: StudyReady,
        delivered: Delivered,
        claim: store.Claim | None,
        exc: Exception,
    ) -> Verdict:
        attempt = claim.attempt if claim else delivered.delivery_count + 1
        decision = self.policy.decide(attempt, exc)
        log.log(
            logging.WARNING if decision.action is Action.RETRY else logging.ERROR,
            "event=job_error job=%s attempt=%d error=%s action=%s reason=%s",
            message.job_id,
            attempt,
            exc.__class__.__name__,
            decision.action.value,
            decision.reason,
            exc_info=not isinstance(exc, StudyUnusable | BadMessage | StorageUnavailable),
        )
        if decision.action is Action.DEAD_LETTER:
            return Verdict.REJECT
        if decision.action is Action.RETRY:
            if claim is not None:
                try:
                    store.release(self.db, claim, decision.reason)
                except Exception:
                    log.warning("event=job_release_failed job=%s", message.job_id)
            self.stop.wait(decision.delay)
            return Verdict.RETRY
        state = JobState.SKIPPED if decision.action is Action.SKIP else JobState.FAILED
        try:
            if claim is None:
                return Verdict.REJECT  # cannot record it: the database never answered
            store.finish(self.db, claim, state, decision.reason)
        except store.ClaimLost:
            return Verdict.ACK
        except Exception:
            log.exception("event=job_finish_failed job=%s", message.job_id)
            return Verdict.REJECT  # keep the message in the dead-letter queue for a replay
        log.info(
            "event=job_ended job=%s state=%s reason=%s",
            message.job_id,
            state.value,
            decision.reason,
        )
        self._publish(message.job_id)
        return Verdict.ACK


# Share of the whole job each pipeline stage covers, as (start, width) of ``jobs.progress``.
_STAGES = {"read": (0.0, 0.3), "inference": (0.3, 0.65), "postprocess": (0.95, 0.05)}


def overall_progress(stage: str, fraction: float) -> float:
    """The job's progress in [0, 1] from a pipeline ``(stage, fraction)`` report."""
    start, width = _STAGES.get(stage, (0.0, 0.0))
    return round(start + width * min(max(float(fraction), 0.0), 1.0), 4)


class _Progress:
    """``progress(stage, fraction)`` for the pipeline: throttled writes of ``jobs.progress``.

    Raises ``ClaimLost`` inside the pipeline when another attempt has taken the job over,
    which stops work whose result could not be committed anyway.
    """

    def __init__(self, handler: JobHandler, claim: store.Claim) -> None:
        self.handler = handler
        self.claim = claim
        self.last = 0.0
        self.inferring = False

    def __call__(self, stage: str, fraction: float) -> None:
        if stage == "inference" and not self.inferring:
            self.inferring = True
            self.handler.faults.hit("mid_infer")
        now = time.monotonic()
        if now - self.last < self.handler.progress_interval:
            return
        self.last = now
        try:
            owned = store.progress(self.handler.db, self.claim, overall_progress(stage, fraction))
        except Exception:
            log.debug("event=progress_write_failed job=%s", self.claim.job_id, exc_info=True)
            return
        if not owned:
            raise store.ClaimLost(self.claim.job_id)
