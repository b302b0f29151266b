from __future__ import annotations

import threading
import time

from services.worker.gate import JobGate


def _enter_in_thread(
    gate: JobGate, *, solo: bool, stop: threading.Event, release: threading.Event
) -> tuple[threading.Thread, list[bool]]:
    entered: list[bool] = []

    def run() -> None:
        with gate.slot(solo=solo, stop=stop, poll=0.01) as ok:
            entered.append(ok)
            if ok:
                release.wait(5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, entered


def _eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_jobs_run_together() -> None:
    gate, stop, release = JobGate(), threading.Event(), threading.Event()
    threads = [_enter_in_thread(gate, solo=False, stop=stop, release=release) for _ in range(3)]
    assert _eventually(lambda: gate.running == 3)
    release.set()
    for thread, entered in threads:
        thread.join(5)
        assert entered == [True]
    assert gate.running == 0


def test_a_solo_job_waits_for_the_running_and_holds_back_the_new() -> None:
    gate, stop = JobGate(), threading.Event()
    first_done, solo_done, later_done = threading.Event(), threading.Event(), threading.Event()
    first, _ = _enter_in_thread(gate, solo=False, stop=stop, release=first_done)
    assert _eventually(lambda: gate.running == 1)
    solo, solo_entered = _enter_in_thread(gate, solo=True, stop=stop, release=solo_done)
    time.sleep(0.1)
    assert solo_entered == []  # the first job is still running
    later, later_entered = _enter_in_thread(gate, solo=False, stop=stop, release=later_done)
    time.sleep(0.1)
    assert later_entered == []  # the waiting solo job goes first
    first_done.set()
    assert _eventually(lambda: solo_entered == [True])
    time.sleep(0.1)
    assert later_entered == [] and gate.running == 1  # nothing beside a solo job
    solo_done.set()
    assert _eventually(lambda: later_entered == [True])
    later_done.set()
    for thread in (first, solo, later):
        thread.join(5)
    assert gate.running == 0


def test_stop_while_waiting_enters_nothing() -> None:
    gate, stop, release = JobGate(), threading.Event(), threading.Event()
    running, _ = _enter_in_thread(gate, solo=True, stop=stop, release=release)
    assert _eventually(lambda: gate.running == 1)
    waiting, entered = _enter_in_thread(gate, solo=False, stop=stop, release=release)
    time.sleep(0.05)
    stop.set()
    assert _eventually(lambda: entered == [False])
    assert gate.running == 1  # the solo job still holds its slot
    release.set()
    running.join(5)
    waiting.join(5)
    assert gate.running == 0
