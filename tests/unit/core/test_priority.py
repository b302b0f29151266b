"""CPU priority (services/core/priority.py): each case runs in a child process, so the test
process keeps its own priority (a nice value cannot be lowered again without privileges)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.priority import autogroup_nice, yield_cpu

ROOT = Path(__file__).resolve().parents[3]
HAS_AUTOGROUP = Path("/proc/self/autogroup").exists()

CHILD = """
import json, os, sys, threading
from pathlib import Path
from services.core.priority import yield_cpu, autogroup_nice
before = sys.argv[2]
if before:
    Path("/proc/self/autogroup").write_text(before)
seen = {}
go = threading.Event()
def earlier():
    go.wait()
    seen["earlier"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
running = threading.Thread(target=earlier)
running.start()
result = yield_cpu(int(sys.argv[1]), whole_process=sys.argv[3] == "process")
go.set()
running.join()
def later():
    seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
thread = threading.Thread(target=later)
thread.start()
thread.join()
group = Path("/proc/self/autogroup")
print(json.dumps({
    "nice": result.nice,
    "autogroup_nice": result.autogroup_nice,
    "main": os.getpriority(os.PRIO_PROCESS, 0),
    "thread": seen["thread"],
    "earlier": seen["earlier"],
    "group_now": autogroup_nice(group.read_text()) if group.exists() else None,
}))
"""


def run_child(
    nice: int, *, whole: bool, own_session: bool = True, start_nice: int = 0, group: str = ""
) -> dict[str, int | None]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(nice), group, "process" if whole else "thread"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        start_new_session=own_session,
        preexec_fn=(lambda: os.nice(start_nice)) if start_nice else None,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_autogroup_line_is_parsed() -> None:
    assert autogroup_nice("/autogroup-85 nice 0\n") == 0
    assert autogroup_nice("/autogroup-3 nice -5") == -5
    assert autogroup_nice("/autogroup-12 nice 19") == 19
    assert autogroup_nice("nice 5") is None
    assert autogroup_nice("") is None


@pytest.mark.parametrize("nice", [-1, 20])
def test_out_of_range_is_refused(nice: int) -> None:
    with pytest.raises(ValueError, match="0 to 19"):
        yield_cpu(nice, whole_process=False)


def test_session_leader_lowers_its_threads_and_its_autogroup() -> None:
    """Threads already running (a library's), threads started after, and the group."""
    seen = run_child(7, whole=True)
    assert (seen["nice"], seen["main"], seen["thread"], seen["earlier"]) == (7, 7, 7, 7)
    if HAS_AUTOGROUP:
        assert seen["autogroup_nice"] == 7
        assert seen["group_now"] == 7
    else:
        assert seen["autogroup_nice"] is None


def test_autogroup_of_a_shared_session_is_left_alone() -> None:
    """Started from a shell (same session): the group is the shell's, not touched."""
    mine = Path("/proc/self/autogroup").read_text() if HAS_AUTOGROUP else ""
    seen = run_child(6, whole=True, own_session=False)
    assert (seen["nice"], seen["thread"], seen["earlier"]) == (6, 6, 6)
    assert seen["autogroup_nice"] is None
    if HAS_AUTOGROUP:
        assert seen["group_now"] == autogroup_nice(mine)


def test_calling_thread_only_leaves_other_threads_and_the_autogroup() -> None:
    """``serve``: the worker's threads, started earlier, keep their priority."""
    seen = run_child(4, whole=False)
    assert (seen["nice"], seen["thread"], seen["earlier"]) == (4, 4, 0)
    assert seen["autogroup_nice"] is None
    if HAS_AUTOGROUP:
        assert seen["group_now"] == 0


def test_never_raises_a_priority() -> None:
    """A process already lower (nice 10, autogroup 12) stays there."""
    seen = run_child(5, whole=True, start_nice=10, group="12" if HAS_AUTOGROUP else "")
    assert (seen["nice"], seen["main"], seen["thread"], seen["earlier"]) == (10, 10, 10, 10)
    if HAS_AUTOGROUP:
        assert seen["autogroup_nice"] == 12
        assert seen["group_now"] == 12


def test_zero_changes_nothing() -> None:
    seen = run_child(0, whole=True)
    assert (seen["nice"], seen["thread"], seen["earlier"]) == (0, 0, 0)
    assert seen["autogroup_nice"] is None
    if HAS_AUTOGROUP:
        assert seen["group_now"] == 0
