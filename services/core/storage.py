"""Instance storage behind one small interface (local disk now; object storage later).

Keys are built only from validated UIDs, never from raw attributes.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Protocol

from services.core.errors import PermanentError
from services.core.uids import is_valid_uid


class UnsafeKeyError(PermanentError, ValueError):
    """A UID that is not safe to use in a storage key."""

    code = "unsafe-key"


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """``<study>/<series>/<sop>.dcm`` after checking each UID."""
    for uid in (study_uid, series_uid, sop_uid):
        if not is_valid_uid(uid):
            raise UnsafeKeyError(f"not a valid UID: {uid[:80]!r}")
    return f"{study_uid}/{series_uid}/{sop_uid}.dcm"


class Storage(Protocol):
    def temp_path(self) -> Path: ...

    def commit(self, temp: Path, key: str) -> None: ...

    def path(self, key: str) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def free_bytes(self) -> int: ...


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (renames into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Files under ``root``; temporary files under ``root/.tmp/<host>`` on the same file
    system, so a host cleaning up after a crash never touches another host's transfers."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / ".tmp" / (socket.gethostname()[:64] or "host")
        self.tmp.mkdir(parents=True, exist_ok=True)

    def temp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if self.root not in target.parents:
            raise UnsafeKeyError(f"key escapes storage: {key[:80]!r}")
        return target

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def commit(self, temp: Path, key: str) -> None:
        """fsync ``temp``, rename it atomically to ``key`` and fsync the folder."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_dir(target.parent)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def clean_temp(self) -> int:
        """Remove temporary files left by a killed process; returns how many."""
        removed = 0
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
