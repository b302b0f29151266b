"""The node under test for the turnaround and burst benchmarks, as a hospital runs it.

``serve``: one ``noduleflow serve`` process (SQLite, local storage, in-process broker).
``distributed``: ``noduleflow receiver``, ``worker`` and ``reporter`` as three processes on
PostgreSQL and RabbitMQ (a fresh database and queue prefix, removed at the end). Either way
a real Orthanc (``tests/orthanc.py``) is the PACS the results are stored into, and every
process's memory is readable from ``/proc`` (:func:`process_memory`).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.core.db import Database
from services.core.priority import autogroup_nice
from tests.chaos.cluster import Service
from tests.orthanc import Orthanc, running_orthanc
from tests.perf.bench_ingest import _wait_echo
from tests.perf.bench_worker import delete_queues, make_database
from tests.services import RABBIT_URL, free_port, port_open, wait_port

ROOT = Path(__file__).resolve().parents[2]
FORMS = ("serve", "distributed")
PASSED_THROUGH = (
    "NODULEFLOW_RECEIVER_NICE",
    "NODULEFLOW_WORKER_CONCURRENCY",
    "NODULEFLOW_WORKER_KEEP_MEMORY",
    "NODULEFLOW_WORKER_SPLIT_CORES",
)
# Completion settings: the shipped defaults, and the fastest we call safe — a release grace
# that still bridges a router re-opening an association, and MONAI Informatics Gateway's
# 5 s window as the idle time (docs/operations.md §13).
COMPLETION = {
    "default": {"STUDY_IDLE_SECONDS": "10", "RELEASE_GRACE_SECONDS": "2"},
    "fastest": {"STUDY_IDLE_SECONDS": "5", "RELEASE_GRACE_SECONDS": "0.5"},
}


@dataclass
class Node:
    """A running node: its processes, database, ports and the Orthanc behind it."""

    form: str
    services: list[Service]
    db: Database
    dicom_port: int
    api_url: str
    pacs: Orthanc
    aet: str = "NODULEFLOW"
    _pids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def pids(self, *, refresh: bool = True) -> dict[str, list[int]]:
        """Each service's process and its descendants (a receiver's SCP processes). One scan
        of ``/proc`` for all of them (a few ms of the benchmark's CPU); ``refresh=False``
        reuses the last scan while every process in it is still there."""
        known = self._pids
        if refresh or not known or not all(os.path.exists(f"/proc/{p}") for p in _all(known)):
            children = child_map()
            known = {
                s.name: [s.proc.pid, *descendants(s.proc.pid, children)]
                for s in self.services
                if s.proc
            }
            self._pids = known
        return known

    def alive(self) -> bool:
        return all(s.alive for s in self.services)


def _all(pids: dict[str, list[int]]) -> list[int]:
    return [pid for group in pids.values() for pid in group]


def child_map() -> dict[int, list[int]]:
    """Every process's children, from one pass over ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(raw[raw.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    tree = child_map() if children is None else children
    found, todo = [], [root]
    while todo:
        kids = tree.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def parse_status(text: str) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) in bytes from the text of ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            number, unit = value.split()
            if unit != "kB":
                raise ValueError(f"unexpected unit {unit!r} in {line!r}")
            out[key] = int(number) * 1024
    return out


def process_memory(pid: int) -> dict[str, int]:
    """Current and peak RSS of one process in bytes (empty once it is gone)."""
    try:
        return parse_status(Path(f"/proc/{pid}/status").read_text())
    except (OSError, ValueError):
        return {}


def process_priority(pid: int) -> str:
    """``nice N`` of one process (its main thread) and its autogroup's, as ``ps`` and
    ``/proc/<pid>/autogroup`` give them; ``?`` for what cannot be read."""
    try:
        nice: int | str = os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        nice = "?"
    try:
        group = autogroup_nice(Path(f"/proc/{pid}/autogroup").read_text())
    except OSError:
        group = None
    return f"nice {nice}, autogroup {'?' if group is None else group}"


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds one process has used (None once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu(text: str | None = None) -> tuple[float, float]:
    """The whole machine's busy and total CPU seconds since boot, from ``/proc/stat``."""
    line = (text if text is not None else Path("/proc/stat").read_text()).splitlines()[0]
    ticks = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    busy = total - ticks[3] - ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, total / hz


def base_env(work: Path, completion: str, pacs: Orthanc, model_dir: Path) -> dict[str, str]:
    # PASSED_THROUGH, to compare CPU priorities (core/priority.py), jobs at once
    # (worker/consumer.py) and the worker's kept memory (core/heap.py)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NODULEFLOW_") or k in PASSED_THROUGH
    }
    env.update({f"NODULEFLOW_{k}": v for k, v in COMPLETION[completion].items()})
    env.update(
        {
            "NODULEFLOW_STORAGE_DIR": str(work / "storage"),
            "NODULEFLOW_OUTBOX_DIR": str(work / "outbox"),
            "NODULEFLOW_MODEL_DIR": str(model_dir),
            "NODULEFLOW_PROVIDERS": os.environ.get("NODULEFLOW_PROVIDERS", "auto"),
            "NODULEFLOW_PACS": pacs.address,
            "NODULEFLOW_API_RATE_LIMIT": "0",  # the bench polls the FHIR API
            "NODULEFLOW_LOG_LEVEL": "INFO",
            "NODULEFLOW_DICOM_PORT": str(free_port()),
            "NODULEFLOW_API_PORT": str(free_port()),
        }
    )
    return env


@contextmanager
def running_node(
    work: Path, *, form: str, completion: str = "default", model_dir: Path | None = None
) -> Iterator[Node]:
    """Orthanc, then the node in ``form`` with ``completion`` settings; all stopped on exit."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if completion not in COMPLETION:
        raise ValueError(f"completion must be one of {sorted(COMPLETION)}, not {completion!r}")
    model_dir = model_dir or ROOT / "models" / "nodule-seg"
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "services.cli"]
    with ExitStack() as stack:
        pacs = stack.enter_context(running_orthanc(work / "orthanc", aet="PACS"))
        env = base_env(work, completion, pacs, model_dir)
        if form == "serve":
            url = f"sqlite:///{work / 'noduleflow.db'}"
            env.update({"NODULEFLOW_DATABASE_URL": url, "NODULEFLOW_BROKER_URL": ""})
            services = [Service("serve", [*cli, "serve"], env, work / "serve.log")]
        else:
            if not (port_open("127.0.0.1", 5432) and port_open("127.0.0.1", 5672)):
                raise SystemExit("the distributed form needs PostgreSQL :5432 and RabbitMQ :5672")
            url, drop = make_database()
            stack.callback(drop)
            prefix = f"nfbench.{uuid.uuid4().hex[:8]}"
            stack.callback(delete_queues, prefix)
            env.update(
                {
                    "NODULEFLOW_DATABASE_URL": url,
                    "NODULEFLOW_BROKER_URL": RABBIT_URL,
                    "NODULEFLOW_BROKER_PREFIX": prefix,
                }
            )
            services = [
                Service(name, [*cli, name], env, work / f"{name}.log")
                for name in ("receiver", "worker", "reporter")
            ]
        db = Database(url)
        db.upgrade()
        stack.callback(db.dispose)
        for service in services:
            stack.callback(service.stop)
            service.start()
        node = Node(
            form,
            services,
            db,
            int(env["NODULEFLOW_DICOM_PORT"]),
            f"http://127.0.0.1:{env['NODULEFLOW_API_PORT']}",
            pacs,
        )
        wait_ready(node, work)
        yield node


def wait_ready(node: Node, work: Path, timeout: float = 300) -> None:
    """DICOM echo, the API's metadata, and (distributed) the worker consuming."""
    deadline = time.monotonic() + timeout
    api_port = int(node.api_url.rsplit(":", 1)[1])
    if not wait_port("127.0.0.1", api_port, timeout=timeout):
        raise RuntimeError(f"{node.form}: API did not open; see the logs in {work}")
    _wait_echo(node.dicom_port, node.aet, timeout=max(1.0, deadline - time.monotonic()))
    httpx.get(f"{node.api_url}/fhir/metadata", timeout=30).raise_for_status()
    distributed = node.form == "distributed"
    worker_log = work / ("worker.log" if distributed else "serve.log")
    needle = "event=consuming" if distributed else "event=worker_started"  # in-process broker
    while needle not in worker_log.read_text(errors="replace"):
        if time.monotonic() > deadline or not node.alive():
            raise RuntimeError(f"{node.form}: the worker is not consuming; see {worker_log}")
        time.sleep(0.2)
