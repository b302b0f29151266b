"""One StudyReady message → one job attempt: claim, analyse, commit, publish, verdict.

The handler is shared by the worker's consumer threads; its :class:`JobGate` lets a job
whose earlier attempt did not finish run only alone.

The handler is idempotent by job id: a redelivered message for a job whose results are
already committed only (re)publishes the committed StudyResult and is acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from services.core.broker import Delivered, Verdict
from services.core.db import Database, JobState
from services.core.errors import NoduleflowError, is_db_unavailable
from services.core.messages import StudyReady
from services.core.outbox import Relay
from services.core.storage import LocalStorage
from services.worker import results, store
from services.worker.analyze import Analyze, default_analyze
from services.worker.faults import Faults
from services.worker.gate import JobGate
from services.worker.policy import (
    Action,
    BadMessage,
    RetryPolicy,
    StorageUnavailable,
    StudyUnusable,
)
from services.worker.progress import JobProgress

if TYPE_CHECKING:
    from services.analysis.pipeline import ProbabilityModel

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        engine: ProbabilityModel,
        relay: Relay,
        *,
        policy: RetryPolicy,
        worker_id: str,
        stop: threading.Event | None = None,
        analyze: Analyze = default_analyze,
        faults: Faults | None = None,
        progress_interval: float = 0.5,
        gate: JobGate | None = None,
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
        self.gate = gate or JobGate()  # one per handler: its consumer threads share it

    def __call__(self, delivered: Delivered) -> Verdict:
        try:
            message = parse(delivered)
        except BadMessage as exc:
            log.error("event=job_rejected message_id=%s reason=%s", delivered.message_id[:64], exc)
            return Verdict.REJECT
        job_id = message.job_id
        try:
            # A job claimed before (the claim counts attempts) runs with no other (gate.py).
            solo = self._patiently(job_id, lambda: store.attempts(self.db, job_id)) > 0
        except Exception as exc:
            return self._failed(message, delivered, None, exc)
        with self.gate.slot(solo=solo, stop=self.stop) as entered:
            if not entered:
                log.info("event=job_deferred job=%s reason=worker stopping", job_id)
                return Verdict.RETRY
            if solo:
                log.info("event=job_alone job=%s note=tried before", job_id)
            return self._attempt(message, delivered)

    def _attempt(self, message: StudyReady, delivered: Delivered) -> Verdict:
        started = time.perf_counter()
        claim: store.Claim | None = None
        try:
            outcome = self._patiently(
                message.job_id,
                lambda: store.claim(
                    self.db,
                    message.job_id,
                    message.study_instance_uid,
                    [ref.uid for ref in message.series],
                    max_attempts=self.policy.max_attempts,
                    worker=self.worker_id,
                ),
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
            self.faults.hit("after_claim", claim.job_id)
            claimed = time.perf_counter()
            self._run(claim, claimed, claiming=claimed - started)
        except store.ClaimLost:
            # A newer attempt owns the job and its own delivery; or a commit whose reply was
            # lost did go through. Either way what is committed gets published.
            log.warning("event=job_taken_over job=%s", message.job_id)
            self._publish(message.job_id)
            return Verdict.ACK
        except Exception as exc:
            return self._failed(message, delivered, claim, exc)
        self._publish(message.job_id)
        self.faults.hit("after_publish", message.job_id)
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

    def _run(self, claim: store.Claim, started: float, *, claiming: float) -> None:
        """Analyse, commit. ``started``: when the claim returned (its ``queued_s`` runs up to
        then); ``claiming``: the seconds the claim took."""
        paths = self._paths(claim)
        load = time.perf_counter() - started
        reporter = JobProgress(self.db, claim, self.faults, interval=self.progress_interval)
        result = self.analyze(paths, self.engine, progress=reporter)
        analysed = time.perf_counter()
        count = len(result.findings)
        details = results.job_details(result, worker=self.worker_id, attempt=claim.attempt)
        self.faults.hit("before_commit", claim.job_id)
        timings = results.stage_timings(
            result.timings,
            claim=claiming,
            load=load,
            total=time.perf_counter() - started,
            queued=claim.queued_s,
        )
        self._patiently(
            claim.job_id,
            lambda: store.commit_result(
                self.db,
                claim,
                results.finding_rows(result.findings),  # fresh rows for every try
                details=details,
                timings=timings,
            ),
        )
        log.info(
            "event=job_committed job=%s findings=%d provider=%s analysis_s=%.2f total_s=%.2f",
            claim.job_id,
            count,
            details.model.provider if details.model else "",
            analysed - started - load,
            time.perf_counter() - started,
        )
        self.faults.hit("after_commit", claim.job_id)

    def _patiently(self, job_id: str, operation: Callable[[], T]) -> T:
        """Run a database operation, waiting in place while the database is unavailable.

        The message stays unacknowledged (heartbeats keep flowing) and a computed result
        stays in memory, so an outage costs neither a redelivery nor a recomputation.
        """
        tries, since = 0, time.monotonic()
        while True:
            try:
                return operation()
            except Exception as exc:
                waited = time.monotonic() - since
                delay = self.policy.outage_delay(tries, waited)
                if not is_db_unavailable(exc) or delay is None or self.stop.is_set():
                    raise
                log.warning(
                    "event=db_unavailable job=%s retry_in=%.1f waited_s=%.0f error=%s",
                    job_id,
                    delay,
                    waited,
                    exc.__class__.__name__,
                )
                self.stop.wait(delay)
                tries += 1

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
            exc_info=not isinstance(exc, NoduleflowError),
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
            self._patiently(
                claim.job_id, lambda: store.finish(self.db, claim, state, decision.reason)
            )
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
