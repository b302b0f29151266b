"""R8 (a study that kills the worker every time) and R12 (database away at commit)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from services.core.messages import INFERENCE_QUEUE
from tests.integration.worker.harness import Node, clone_study
from tests.integration.worker.proxy import CuttableProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_poison_study_ends_failed_after_max_attempts(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    seeded = node.submit(clone_study(chest_files, tmp_path / "poison"))
    poison = {"NODULEFLOW_FAULT_AT": "mid_infer:exit", "NODULEFLOW_JOB_MAX_ATTEMPTS": "2"}
    for n in range(2):  # a supervisor restarts the worker after each crash
        crashing = node.worker(f"crash{n}", **poison)
        assert crashing.wait(timeout=90) == 137, crashing.tail()
    survivor = node.worker("survivor", **poison)
    job = node.wait_state(seeded.job_id, "failed", "reporting", timeout=90)
    assert (job.state, job.attempts) == ("failed", 2)
    assert job.reason == "gave up after 2 attempts: the worker stopped while processing it"
    assert [(r.job_id, r.status) for r in node.results()] == [(seeded.job_id, "failed")]
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 0
    assert survivor.proc.poll() is None, survivor.tail()


def test_database_outage_at_commit_is_waited_out_without_recomputing(
    node: Node, chest_files: list[Path], tmp_path: Path, postgres_url: str
) -> None:
    url = make_url(postgres_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        seeded = node.submit(clone_study(chest_files, tmp_path / "study"))
        worker = node.worker(
            "patient",
            NODULEFLOW_DATABASE_URL=proxied,
            NODULEFLOW_FAULT_AT="before_commit:sleep=2:times=1",
        )
        worker.wait_log("fault_injected point=before_commit")
        proxy.cut()
        worker.wait_log("event=db_unavailable", timeout=30)
        time.sleep(2)
        assert node.job(seeded.job_id).state == "inferring"  # nothing committed meanwhile
        proxy.restore()
        job = node.wait_state(seeded.job_id, "reporting", "failed", timeout=90)
        assert (job.state, job.attempts) == ("reporting", 1)
        assert worker.log.read_text().count("event=job_claimed") == 1
        assert [r.job_id for r in node.results()] == [seeded.job_id]
        assert node.broker.queue_depth(INFERENCE_QUEUE) == 0
    finally:
        proxy.close()
