"""CPU priority: the receiver leaves the cores to the analysis first.

On a node where the analysis is the bottleneck, ingest can wait a few milliseconds; the
model cannot share its cores without losing more than the CPU it gives up (its intra-op
threads wait on each other when one is preempted). So the receiver lowers its own priority
at start (``NODULEFLOW_RECEIVER_NICE``, default 10; 0 leaves it alone). The worker and the
reporter keep theirs: the reporter's FHIR API answers people, and lowered beside a busy
analysis its p95 latency went from 31 to 318 ms (``docs/performance.md``).

Two kernel mechanisms decide between processes, and a process can lower itself in both
without privileges:

* the *nice value*, per thread on Linux and inherited by every thread and process created
  afterwards: it ranks threads that share a scheduling group (``noduleflow serve``, where
  the three services are threads of one process, or services in one container);
* the *autogroup* (``/proc/self/autogroup``): a process that leads its own session (started
  by a supervisor with ``setsid``) gets its own group, weighted by the group's nice value,
  not the threads'. Lowered only when this process leads its session, so a service started
  from a shell never lowers the shell's other jobs. It does not apply inside a cgroup with
  its own weight: under systemd or Kubernetes the units' ``CPUWeight`` or the pods' CPU
  requests rank the services (``deploy/``).

Nothing here raises a priority: a value already lower (a higher nice) is kept. A failure to
read or write the autogroup is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")
MAX_NICE = 19
_AUTOGROUP_LINE = re.compile(r"^/autogroup-\d+ nice (-?\d+)\s*$")


@dataclass(frozen=True)
class Priority:
    """What :func:`yield_cpu` left in place."""

    nice: int  # the calling thread's nice value (inherited from now on)
    autogroup_nice: int | None  # the session's autogroup nice; None: not lowered or none


def autogroup_nice(text: str) -> int | None:
    """The nice value in a ``/proc/<pid>/autogroup`` line (``/autogroup-85 nice 0``)."""
    match = _AUTOGROUP_LINE.match(text.strip())
    return int(match.group(1)) if match else None


def leads_session() -> bool:
    return os.getsid(0) == os.getpid()


def yield_cpu(nice: int, *, whole_process: bool) -> Priority:
    """Lower the calling thread to ``nice``; threads and processes it starts afterwards
    inherit it. With ``whole_process``, also the threads already running (those a library
    started on import) and, when this process leads its session, the session's autogroup.
    Never raises a priority."""
    if not 0 <= nice <= MAX_NICE:
        raise ValueError(f"nice must be 0 to {MAX_NICE}, not {nice}")
    tids = _threads() if whole_process else []
    for tid in [0, *tids]:  # 0: the calling thread
        _lower(tid, nice)
    current = os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: this thread's
    group = _lower_autogroup(nice) if whole_process and nice > 0 else None
    log.info("event=cpu_priority nice=%d autogroup_nice=%s", current, group)
    return Priority(nice=current, autogroup_nice=group)


def _threads() -> list[int]:
    try:
        return [int(task.name) for task in Path("/proc/self/task").iterdir()]
    except OSError:  # not Linux: the calling thread only
        return []


def _lower(tid: int, nice: int) -> None:
    try:
        if nice > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except ProcessLookupError:  # a thread that ended meanwhile
        pass


def _lower_autogroup(nice: int) -> int | None:
    if not leads_session():
        return None  # the group is the session's, shared with whoever started this process
    try:
        now = autogroup_nice(AUTOGROUP.read_text())
        if now is None:
            return None
        if now >= nice:
            return now
        AUTOGROUP.write_text(f"{nice}\n")
        return autogroup_nice(AUTOGROUP.read_text())
    except OSError as exc:  # no autogroup support, or rate-limited (EAGAIN): not needed
        log.info("event=cpu_priority_autogroup_skipped error=%s", exc.strerror or exc)
        return None
