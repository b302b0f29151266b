"""R6: the worker's broker connections die mid-job and while idle."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services.core.messages import INFERENCE_QUEUE
from tests.integration.worker.harness import Node, WorkerProc, clone_study
from tests.services import rabbitmqctl, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def close_connections(worker: WorkerProc) -> int:
    """Close every broker connection of ``worker`` (by its connection name); returns how many."""
    listed = rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    assert listed.returncode == 0, listed.stderr
    marker = f'{{"connection_name","noduleflow {socket.gethostname()}:{worker.proc.pid}"}}'
    pids = [line.split("\t", 1)[0] for line in listed.stdout.splitlines() if marker in line]
    for pid in pids:
        closed = rabbitmqctl("close_connection", pid, "test: connection lost")
        assert closed.returncode == 0, closed.stderr
    return len(pids)


def test_connection_lost_mid_job_is_settled_by_redelivery_not_recomputed(
    node: Node, chest_files: list[Path], tmp_path: Path
) -> None:
    require_tool("rabbitmqctl")
    first = node.submit(clone_study(chest_files, tmp_path / "one"))
    worker = node.worker("flaky", NODULEFLOW_FAULT_AT="mid_infer:sleep=7:times=1")
    worker.wait_log("fault_injected point=mid_infer")
    assert close_connections(worker) >= 1
    worker.wait_log("event=broker_consume_lost")
    assert node.job(first.job_id).state == "inferring"  # the handler is still at work
    worker.wait_log(f"event=job_not_run job={first.job_id} state=reporting", timeout=90)
    job = node.job(first.job_id)
    assert (job.state, job.attempts) == ("reporting", 1)  # one attempt: no overlap, no rerun
    assert "event=broker_consume_lost" in worker.log.read_text()

    # While idle: both connections die; the next study is still consumed and its result
    # published (publisher reconnects on its own).
    time.sleep(1)
    assert close_connections(worker) >= 1
    second = node.submit(clone_study(chest_files, tmp_path / "two"))
    assert node.wait_state(second.job_id, "reporting", "failed").state == "reporting"
    results = node.results()
    assert sorted(r.job_id for r in results) == sorted([first.job_id, second.job_id])
    assert node.broker.queue_depth(INFERENCE_QUEUE) == 0
    assert worker.proc.poll() is None, worker.tail()
