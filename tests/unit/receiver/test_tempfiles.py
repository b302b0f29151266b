from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from services.receiver.fast.tempfiles import HashingFile, clean, discard


def test_hashing_file_hashes_and_caps(tmp_path: Path) -> None:
    handle = HashingFile(tmp_path, max_bytes=10)
    handle.write(b"12345")
    handle.file.flush()
    assert handle.size == 5 and not handle.overflow
    handle.write(b"678901")  # crosses the cap: discarded, flagged
    assert handle.overflow
    handle.close()
    assert Path(handle.name).read_bytes() == b"12345"
    assert handle.hexdigest() == hashlib.sha256(b"12345").hexdigest()


def test_discard_and_clean(tmp_path: Path) -> None:
    handle = HashingFile(tmp_path, max_bytes=100)
    handle.write(b"partial")
    discard(handle)
    assert not Path(handle.name).exists()
    old, new = tmp_path / "a.part", tmp_path / "b.part"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert clean(tmp_path, older_than=600) == 1
    assert new.exists() and not old.exists()
    assert clean(tmp_path) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_failed_write_removes_the_file_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """pynetdicom writes from its reader thread, where an exception aborts the association:
    the file is removed at once, later chunks are dropped, and the handler is told why."""
    handle = HashingFile(tmp_path, max_bytes=1 << 20)
    assert handle.write(b"preamble") == 8

    def full(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", full)
    assert handle.write(b"x" * 1000) == 1000
    monkeypatch.undo()
    assert handle.write(b"more") == 4  # discarded, not written
    assert handle.failed and handle.no_space is (code != errno.EIO)
    assert not list(tmp_path.iterdir()) and handle.closed


def test_a_file_that_cannot_be_created_fails_quietly(tmp_path: Path) -> None:
    missing = tmp_path / "gone"  # e.g. no inode left: the file is never created
    handle = HashingFile(missing, max_bytes=100)
    assert handle.write(b"data") == 4
    assert handle.failed and not handle.no_space and handle.name.endswith(".part")
    discard(handle)  # what the connection-close handler does: nothing to remove
