from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from services.receiver import dirsync
from services.receiver.dirsync import DirSyncer


def test_single_caller_fsyncs_every_time(tmp_path: Path) -> None:
    syncer = DirSyncer()
    syncer.sync(tmp_path)
    syncer.sync(tmp_path)
    assert syncer.fsyncs == 2
    assert not syncer._folders  # nothing kept for idle folders


def test_concurrent_callers_share_an_fsync_that_started_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one fsync runs, later callers wait for one more fsync, which covers them all."""
    started: list[float] = []
    release = threading.Event()

    def slow_fsync(path: Path) -> None:
        started.append(time.monotonic())
        if len(started) == 1:
            release.wait(5)

    monkeypatch.setattr(dirsync, "fsync_dir", slow_fsync)
    syncer = DirSyncer()
    finished: dict[int, float] = {}
    requested: dict[int, float] = {}

    def caller(i: int) -> None:
        requested[i] = time.monotonic()
        syncer.sync(tmp_path)
        finished[i] = time.monotonic()

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    while not started:
        time.sleep(0.001)
    others = [threading.Thread(target=caller, args=(i,)) for i in range(1, 5)]
    for thread in others:
        thread.start()
    time.sleep(0.05)
    assert not finished  # nobody is covered by the fsync that started before them
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert len(finished) == 5
    assert syncer.fsyncs == 2  # one for the first caller, one shared by the other four
    for i in range(1, 5):
        assert started[1] >= requested[i]  # the shared fsync started after each request


def test_failed_fsync_is_retried_by_a_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing_once(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError("I/O error")

    monkeypatch.setattr(dirsync, "fsync_dir", failing_once)
    syncer = DirSyncer()
    with pytest.raises(OSError):
        syncer.sync(tmp_path)
    syncer.sync(tmp_path)  # not counted as covered by the failed one
    assert len(calls) == 2


def test_a_booked_rename_is_covered_by_a_later_fsync_of_another_thread(tmp_path: Path) -> None:
    """``enter`` right after the rename, ``wait`` after the file's own fsync: a folder fsync
    that another caller ran in between covers it, and none is run again."""
    syncer = DirSyncer()
    booked = syncer.enter(tmp_path)
    other = threading.Thread(target=syncer.sync, args=(tmp_path,))
    other.start()
    other.join(5)
    assert syncer.fsyncs == 1
    syncer.wait(booked)
    assert syncer.fsyncs == 1  # covered: the other caller's fsync started after the booking
    assert not syncer._folders


def test_a_booking_made_while_an_fsync_runs_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = threading.Event()
    release = threading.Event()
    calls: list[float] = []

    def slow_fsync(path: Path) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            running.set()
            release.wait(5)

    monkeypatch.setattr(dirsync, "fsync_dir", slow_fsync)
    syncer = DirSyncer()
    first = threading.Thread(target=syncer.sync, args=(tmp_path,))
    first.start()
    assert running.wait(5)
    booked = syncer.enter(tmp_path)  # the running fsync started before this rename
    release.set()
    first.join(5)
    syncer.wait(booked)
    assert len(calls) == 2
    assert not syncer._folders
