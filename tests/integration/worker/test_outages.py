"""R8 (a study that kills the worker every time, alone or beside another) and R12 (database
away at commit)."""

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


def test_a_poison_study_beside_another_costs_it_at_most_one_attempt(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    """Two jobs in one worker: the poison one kills the process, the other dies with it.
    Redelivered, each runs alone, so the poison one no longer takes the other down."""
    poison = node.submit(clone_study(chest_files, tmp_path / "poison")).job_id
    other = node.submit(clone_study(chest_files, tmp_path / "other")).job_id
    env = {
        "NODULEFLOW_WORKER_CONCURRENCY": "2",
        "NODULEFLOW_JOB_MAX_ATTEMPTS": "3",
        # the other job is still analysing when the poison one kills the worker
        "NODULEFLOW_FAULT_AT": f"mid_infer:sleep=6:job={other},"
        f"mid_infer:sleep=3:job={poison},mid_infer:exit:job={poison}",
    }
    first = node.worker("together", **env)
    assert first.wait(timeout=90) == 137, first.tail()
    assert (node.job(poison).attempts, node.job(other).attempts) == (1, 1)  # both were in hand

    def ended() -> bool:
        return all(node.job(j).state in ("failed", "reporting") for j in (poison, other))

    for n in range(3):  # a supervisor restarts the worker after each crash
        worker = node.worker(f"restart{n}", **env)
        deadline = time.monotonic() + 90
        while worker.proc.poll() is None and not ended():
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        if ended():
            break
        assert worker.proc.returncode == 137, worker.tail()
    assert ended()
    assert (node.job(poison).state, node.job(poison).attempts) == ("failed", 3)
    assert node.job(other).state == "reporting"
    assert node.job(other).attempts == 2  # the first crash, then once alone
    assert "event=job_alone" in worker.log.read_text()
    assert sorted((r.job_id, r.status) for r in node.results()) == sorted(
        [(poison, "failed"), (other, "done")]
    )


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
