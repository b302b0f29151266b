"""The receiver lowers its own CPU priority as started for real (core/priority.py): on its
own with its SCP processes, and inside ``serve``, where the worker's, the reporter's and
the HTTP threads keep the caller's priority."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.priority import autogroup_nice
from tests.integration.receiver.harness import echo_ok, receiver_process, wait_for
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[3]
HAS_AUTOGROUP = Path("/proc/self/autogroup").exists()


def thread_nices(pid: int) -> set[int]:
    """The nice value of every thread of ``pid`` (on Linux, PRIO_PROCESS takes a thread id)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return {os.getpriority(os.PRIO_PROCESS, int(task.name)) for task in tasks}


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_receiver_process_and_its_scp_processes_yield(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NODULEFLOW_")},
        "NODULEFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'nf.db'}",
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_BROKER_URL": "",
        "NODULEFLOW_RECEIVER_PROCESSES": "2",
        "NODULEFLOW_RECEIVER_NICE": "7",
    }
    with receiver_process(env, tmp_path / "receiver.log") as proc:
        assert wait_for(lambda: echo_ok(port), timeout=60), (tmp_path / "receiver.log").read_text()
        scp = children(proc.pid)
        assert len(scp) == 2
        for pid in (proc.pid, *scp):
            assert thread_nices(pid) == {7}, pid
            if HAS_AUTOGROUP:  # started with setsid: the session's group is the receiver's
                assert autogroup_nice(Path(f"/proc/{pid}/autogroup").read_text()) == 7


SERVE = """
import json, os, sys, threading
from pathlib import Path
from services.core.settings import Settings
from services.serve import start
tmp = Path(sys.argv[1])
settings = Settings(
    database_url=f"sqlite:///{tmp / 'nf.db'}", storage_dir=tmp / "storage",
    outbox_dir=tmp / "outbox", dicom_port=int(sys.argv[2]), api_port=int(sys.argv[3]),
)
node = start(settings, http=True, yield_nice=7)
nices = {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threading.enumerate()}
print(json.dumps(nices), flush=True)
node.stop()
"""


@pytest.mark.slow
def test_serve_lowers_the_receivers_threads_only(tmp_path: Path) -> None:
    """The worker's, the reporter's and the HTTP threads keep the caller's priority (the
    FHIR API answers people); the receiver's, started after, take the lowered one."""
    out = subprocess.run(
        [sys.executable, "-c", SERVE, str(tmp_path), str(free_port()), str(free_port())],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("NODULEFLOW_")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        start_new_session=True,
    )
    nices: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    kept = ("noduleflow-worker", "reporter-", "noduleflow-http")
    others = {name: n for name, n in nices.items() if not name.startswith(kept)}
    assert {n for name, n in nices.items() if name.startswith(kept)} == {0}, nices
    assert all(any(name.startswith(k) for name in nices) for k in kept), nices
    assert {"noduleflow-scp", "noduleflow-tracker"} <= set(others), nices
    assert set(others.values()) == {7}, nices
