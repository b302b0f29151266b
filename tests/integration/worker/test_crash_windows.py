"""R1/R2: a worker killed mid-inference or between commit and ack; graceful shutdown."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from services.core.messages import INFERENCE_QUEUE
from tests.integration.worker.harness import Node, clone_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINAL = ("reporting", "failed", "skipped")


def test_sigkill_mid_inference_redelivers_and_completes_once(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    seeded = node.submit(clone_study(chest_files, tmp_path / "study"))
    first = node.worker("first", NODULEFLOW_FAULT_AT="mid_infer:sleep=120")
    first.wait_log("fault_injected point=mid_infer")
    assert node.job(seeded.job_id).state == "inferring"
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    node.worker("second")
    job = node.wait_state(seeded.job_id, *FINAL)
    assert (job.state, job.attempts) == ("reporting", 2)
    assert job.findings_count == len(node.findings(seeded.job_id)) > 0
    results = node.results()
    assert [(r.job_id, r.status, r.findings) for r in results] == [
        (seeded.job_id, "done", job.findings_count)
    ]


def test_killed_after_commit_before_ack_is_not_recomputed(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    """Dies after commit (result not yet published), then after publish (not yet acked)."""
    a = node.submit(clone_study(chest_files, tmp_path / "a"))
    first = node.worker("first", NODULEFLOW_FAULT_AT="after_commit")
    assert first.wait(timeout=120) == 137
    job = node.job(a.job_id)
    assert (job.state, job.attempts) == ("reporting", 1)
    findings = [(f.index, f.center_mm, f.diameter_mm) for f in node.findings(a.job_id)]
    b = node.submit(clone_study(chest_files, tmp_path / "b"))
    second = node.worker("second", NODULEFLOW_FAULT_AT="after_publish")
    assert second.wait(timeout=120) == 137  # took A's redelivery and/or B, died after B
    third = node.worker("third")
    third.wait_log(f"event=job_not_run job={b.job_id} state=reporting")
    logs = second.log.read_text() + third.log.read_text()
    assert f"event=job_not_run job={a.job_id} state=reporting" in logs
    assert [node.job(j.job_id).attempts for j in (a, b)] == [1, 1]  # nothing recomputed
    assert [(f.index, f.center_mm, f.diameter_mm) for f in node.findings(a.job_id)] == findings
    results = node.results()
    assert sorted((r.job_id, r.status) for r in results) == sorted(
        [(a.job_id, "done"), (b.job_id, "done")]
    )
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 0


def test_first_sigterm_drains_second_exits(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    jobs = [node.submit(clone_study(chest_files, tmp_path / f"s{n}")) for n in range(3)]
    worker = node.worker(
        "drain", NODULEFLOW_FAULT_AT="mid_infer:sleep=3", NODULEFLOW_WORKER_CONCURRENCY="2"
    )
    deadline = time.monotonic() + 60
    while worker.log.read_text().count("fault_injected point=mid_infer") < 2:  # both in hand
        assert time.monotonic() < deadline and worker.proc.poll() is None, worker.tail()
        time.sleep(0.1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    states = sorted(node.job(j.job_id).state for j in jobs)
    assert states == ["queued", "reporting", "reporting"]  # the jobs in hand finished, no new
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 1
    assert len(node.results()) == 2

    hasty = node.worker("hasty", NODULEFLOW_FAULT_AT="mid_infer:sleep=60")
    hasty.wait_log("fault_injected point=mid_infer")
    hasty.signal(signal.SIGTERM)
    hasty.wait_log("action=drain")
    hasty.signal(signal.SIGTERM)
    assert hasty.wait(timeout=10) == 128 + signal.SIGTERM
