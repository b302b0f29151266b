"""Where pynetdicom writes an incoming data set, hashed and size-capped as it arrives.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom streams each C-STORE data set to a file it
creates with ``tempfile.NamedTemporaryFile``; we hand it :class:`HashingFile` instead, placed
in the receiver's temporary folder (same file system as storage, so the final move is a
rename), hashing on the fly and discarding bytes past a cap so a hostile peer cannot fill the
disk with one instance. A full volume (ENOSPC) does not abort the association: the file is
removed at once and the instance refused with 0xA700 (:class:`HashingFile`). Installed (and
undone) only through :func:`services.receiver.fast.install`, which also sets the folder
(:func:`configure`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

from services.receiver.fast import DEFAULT_MAX_INSTANCE_BYTES
from services.receiver.fast.patching import Patch

log = logging.getLogger(__name__)

HEAD_BYTES = 32 << 10  # kept in memory for the header reader


#: errno values of a volume without room: the instance is refused with 0xA700 (PS3.4 B.2.3)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class HashingFile:
    """A write-only file with the parts of ``NamedTemporaryFile`` that pynetdicom uses.

    It never raises into pynetdicom: an ``OSError`` while the file is created or written
    (ENOSPC, EDQUOT, EIO…) would abort the association from pynetdicom's reader thread.
    Instead the file is closed and deleted at once (the space goes back to the volume), the
    rest of the data set is discarded as it arrives, and :attr:`error` tells the C-STORE
    handler to answer 0xA700 on an association that stays usable.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.name = str(directory / f"{os.urandom(8).hex()}.part")
        self._fd = -1
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.max_bytes = max_bytes
        self.size = 0
        self.overflow = False
        self.error: int | None = None  # errno of the failure that ended writing
        self._sha = hashlib.sha256()
        self.head = bytearray()
        try:
            self._fd, self.name = _mkstemp(directory)
        except OSError as exc:
            self._failed(exc)

    @property
    def failed(self) -> bool:
        """Writing failed: nothing of this data set is on disk."""
        return self.error is not None

    @property
    def no_space(self) -> bool:
        """It failed because the volume (or the quota) is full."""
        return self.error in NO_SPACE_ERRNOS

    def _failed(self, exc: OSError) -> None:
        self.error = exc.errno if exc.errno is not None else errno.EIO
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self.failed or self.overflow:
            return n  # discard: the handler refuses the instance
        if self.size + n > self.max_bytes:
            self.overflow = True
            return n
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._failed(exc)
            return n
        self._sha.update(data)
        self.size += n
        return n

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def fsync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def __del__(self) -> None:
        self.close()


def _mkstemp(directory: Path) -> tuple[int, str]:
    token = os.urandom(8).hex()
    path = directory / f"{token}.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, str(path)


class _Factory:
    """Stands in for ``NamedTemporaryFile`` inside ``pynetdicom.dimse_messages``."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.max_bytes = DEFAULT_MAX_INSTANCE_BYTES
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> HashingFile:
        directory = self.directory
        if directory is None:
            raise RuntimeError("receiver temporary folder not configured")
        return HashingFile(directory, self.max_bytes)


_FACTORY = _Factory()


def temp_folder(storage_tmp: Path, port: int | None = None) -> Path:
    """The folder for incoming data sets inside this host's temporary folder, one per
    listening ``port`` (receivers sharing a host)."""
    folder = storage_tmp / ("incoming" if port is None else f"incoming-{port}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def configure(directory: Path | None, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES) -> None:
    """Where (and up to what size) incoming data sets are written; None: nowhere."""
    _FACTORY.directory = directory
    _FACTORY.max_bytes = max_bytes


def patches() -> list[Patch]:
    """Receive C-STORE data sets straight to :class:`HashingFile` objects."""
    return [
        Patch(_config, "STORE_RECV_CHUNKED_DATASET", True),
        Patch(dimse_messages, "NamedTemporaryFile", _FACTORY),
    ]


def discard(handle: object) -> None:
    """Close and delete a partially received data set (association aborted)."""
    if isinstance(handle, HashingFile):
        handle.close()
        Path(handle.name).unlink(missing_ok=True)


def clean(directory: Path, *, older_than: float = 0.0) -> int:
    """Delete leftovers of killed or aborted transfers; returns how many were removed."""
    removed = 0
    cutoff = time.time() - older_than
    for leftover in directory.glob("*.part"):
        try:
            if older_than <= 0 or leftover.stat().st_mtime < cutoff:
                leftover.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("event=temp_cleaned folder=%s removed=%d", directory.name, removed)
    return removed
