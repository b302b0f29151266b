"""The node's storage volume, and the fault that fills it.

As root (or with CAP_SYS_ADMIN) it is a tmpfs of ``size_mb`` of its own: ``fill()`` writes
a ballast file until the kernel answers ENOSPC, so the receiver meets a truly full disk
(with the free-space guard off). Without the privilege it is a plain folder and the fault
goes through the receiver's free-space guard instead: the guard is set a little below the
free space at start, and the ballast takes more than that margin. ``mode`` says which.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

CHUNK = 1 << 20
GUARD_MARGIN_MB = 256  # the guard sits this far below the free space at start


class Volume:
    def __init__(self, root: Path, size_mb: int = 384, *, tmpfs: bool = True) -> None:
        """``tmpfs=False`` takes the guard way even where a tmpfs could be mounted."""
        self.root = root
        self.size_mb = size_mb
        root.mkdir(parents=True, exist_ok=True)
        mounted = tmpfs and (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(root)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        self.mode = "tmpfs" if mounted else "guard"
        self.ballast = root / "ballast.bin"
        free_mb = shutil.disk_usage(root).free >> 20
        #: NODULEFLOW_MIN_FREE_DISK_MB for the receivers
        self.min_free_disk_mb = 0 if self.mode == "tmpfs" else max(1, free_mb - GUARD_MARGIN_MB)
        self.fills = 0

    def fill(self) -> int:
        """Write ballast until the volume is full (tmpfs) or below the guard; MB written."""
        self.fills += 1
        limit = None if self.mode == "tmpfs" else 2 * GUARD_MARGIN_MB
        written = 0
        block = b"\0" * CHUNK
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while limit is None or written < limit * CHUNK:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)
        written >>= 20
        return written

    def drain(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        self.drain()
        if self.mode == "tmpfs":
            with contextlib.suppress(OSError):
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False)

    def used_by_ballast(self) -> int:
        return os.path.getsize(self.ballast) if self.ballast.exists() else 0
