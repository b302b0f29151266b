from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

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
