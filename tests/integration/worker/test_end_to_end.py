"""A phantom study sent with DCMTK storescu to the real receiver ends as findings that match
its truth, and as exactly one StudyResult on the reporting queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from services.core.db import Job, Study
from services.core.messages import INFERENCE_QUEUE
from tests.integration.worker.harness import ROOT, Node
from tests.services import free_port, require_tool, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def receiver_process(node: Node, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        **node.env,
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_STUDY_IDLE_SECONDS": "3",
        "NODULEFLOW_RELEASE_GRACE_SECONDS": "0.5",
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
    }
    with (node.logs / "receiver.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "receiver"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def matches(truth: Any, finding: Any) -> bool:
    """Centre within the nodule's radius and mean diameter within 1.5 mm."""
    distance = float(np.linalg.norm(np.subtract(finding.center_mm, truth.center_mm)))
    return distance <= truth.diameter_mm / 2 and abs(finding.diameter_mm - truth.diameter_mm) <= 1.5


def test_phantom_through_receiver_and_worker_matches_truth(
    real_node: Node, phantom_study: Any
) -> None:
    storescu = require_tool("storescu")
    port = free_port()
    worker = real_node.worker("worker")
    with receiver_process(real_node, port):
        assert wait_port("127.0.0.1", port, timeout=60)
        sent = subprocess.run(
            [storescu, "-aet", "PACS", "-aec", "NODULEFLOW", "127.0.0.1", str(port)]
            + [str(p) for p in phantom_study.files],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        job_id = wait_for_job(real_node, phantom_study.study_uid)
        job = real_node.wait_state(job_id, "reporting", "failed", "skipped", timeout=240)
    assert job.state == "reporting", job.reason
    assert job.details["series_uid"] == phantom_study.series_uid
    assert len(job.details["sop_uids"]) == phantom_study.n_slices
    assert job.details["model"]["version"] and job.details["provider"]
    assert {"read", "assemble", "crop", "inference", "postprocess", "total"} <= set(job.timings)
    findings = real_node.findings(job_id)
    assert job.findings_count == len(findings)
    big = [truth for truth in phantom_study.nodules if truth.diameter_mm >= 6]
    assert big, "the phantom must hold a nodule of 6 mm or more"
    for truth in big:
        assert any(matches(truth, f) for f in findings), (
            truth,
            [(f.center_mm, f.diameter_mm) for f in findings],
        )
    results = real_node.results()
    assert [(r.job_id, r.status, r.findings) for r in results] == [(job_id, "done", len(findings))]
    assert real_node.broker.queue_depth(INFERENCE_QUEUE) == 0
    assert worker.proc.poll() is None, worker.tail()


def wait_for_job(node: Node, study_uid: str, timeout: float = 120) -> str:
    """The id of the first job the receiver created for ``study_uid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.db.session() as session:
            job_id = session.scalar(
                select(Job.id).join(Study).where(Study.study_instance_uid == study_uid)
            )
        if job_id:
            return str(job_id)
        time.sleep(0.3)
    raise AssertionError(f"the receiver created no job for the study\n{node.procs[0].tail()}")
