"""Several worker processes share one queue: the backlog is split, no job runs twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from services.core.messages import INFERENCE_QUEUE
from tests.integration.worker.harness import Node, clone_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_split_a_backlog_without_duplicates(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    workers = [node.worker("left"), node.worker("right")]
    for worker in workers:
        worker.wait_log("event=consuming")
    jobs = [node.submit(clone_study(chest_files, tmp_path / f"s{n}")).job_id for n in range(4)]
    ended = [node.wait_state(job_id, "reporting", "failed", "skipped") for job_id in jobs]
    assert [job.state for job in ended] == ["reporting"] * 4
    assert [job.attempts for job in ended] == [1] * 4
    by_worker = Counter(job.details["worker"] for job in ended)
    assert len(by_worker) == 2, by_worker  # prefetch 1: both took part
    results = node.results()
    assert sorted(r.job_id for r in results) == sorted(jobs)
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 0
    for worker in workers:
        assert worker.proc.poll() is None, worker.tail()
