"""Freed memory kept in the process (services/core/heap.py): each case runs in a child
process, so the test process's own malloc stays as it was."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# A worker-like thread allocates and frees a 200 MB volume, as one analysis does; the
# child reports its resident memory before and after.
CHILD = """
import json, sys, threading
import numpy as np
from services.core.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def rss_mb():
    text = open("/proc/self/status").read()
    return int(text.split("VmRSS:")[1].split()[0]) / 1024
def analysis():
    volume = np.ones((200, 512, 512), np.float32)
    del volume
before = rss_mb()
for _ in range(3):
    job = threading.Thread(target=analysis)
    job.start()
    job.join()
print(json.dumps({"kept": kept, "before": before, "after": rss_mb()}))
"""


def run_child(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="needs Linux's /proc and glibc")
def test_a_freed_volume_stays_in_the_process_for_the_next_study() -> None:
    seen = run_child("keep")
    assert seen["kept"] is True
    growth = seen["after"] - seen["before"]
    assert growth > 150  # the 200 MB block was kept...
    assert growth < 300  # ...once: three studies in a row reused it rather than growing


@pytest.mark.skipif(not GLIBC, reason="needs Linux's /proc and glibc")
def test_without_it_the_volume_goes_back_to_the_kernel() -> None:
    seen = run_child("plain")
    assert seen["after"] - seen["before"] < 50
