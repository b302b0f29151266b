"""The inference worker: consumes ``study.ready``, runs the analysis, publishes ``study.result``.

Guarantees (tested in ``tests/integration/worker``):

- At-least-once delivery, exactly-once effect per job: results, job state, details, timings
  and the StudyResult outbox row are committed in one transaction; the result is published
  after the commit and the message acknowledged after that. A redelivered job that is
  already committed is not recomputed; the database refuses a second StudyResult row.
- Every write of an attempt is guarded by the attempt number it claimed, so a redelivery
  claimed elsewhere takes the job over and the older attempt cannot commit.
- Unusable studies end as ``skipped``/``failed`` with a reason and a StudyResult; unreadable
  messages go to the dead-letter queue; transient errors back off and retry up to
  ``NODULEFLOW_JOB_MAX_ATTEMPTS``; a job that kills its worker that many times ends failed.
- Database outages are waited out in place (message held, heartbeats flowing, result kept
  in memory) for up to five minutes.
- First SIGTERM: take no new work, finish the current job; second: exit at once.

Fault injection for tests: ``NODULEFLOW_FAULT_AT`` (see ``services.worker.faults``).
"""
