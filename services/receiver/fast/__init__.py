"""The receiver's pynetdicom performance internals, fenced off from its domain code.

Modules that replace pynetdicom (3.0) attributes, 17 in all; none of them patches anything
on import, only :func:`install` does:

* :mod:`.fastpath`: file meta header, PDU reads (length-capped), P-DATA-TF short cut,
  presentation-context copies (5 attributes);
* :mod:`.commands`: C-STORE command sets encoded and decoded without pydicom (2);
* :mod:`.wakeups`: event-driven waits instead of 1 ms polling in acceptor threads (4); the
  reactor's side (:mod:`.reactor`) also lets the DUL thread serve a plain C-STORE itself;
* :mod:`.tempfiles`: data sets streamed to hashing, size-capped files in the receiver's
  temporary folder (2);
* :mod:`.uids`: UID checks that passed remembered, in the four modules that make UIDs (4).

Pure helpers that patch nothing: :mod:`.headparse` (header reader for the index) and
:mod:`.balance` (connection counts shared by the SCP processes).

:func:`install` is process-wide and idempotent: the first call replaces the attributes and
records the originals (:class:`Installation`), later calls only point :mod:`.tempfiles` at
another folder. :func:`uninstall` puts back every original, the very same objects;
:func:`installed` does both around a block.

**Version policy: refuse.** The patches reach into pynetdicom internals and are tested
against pynetdicom ``>=3.0.4,<3.1`` only (the pin in ``pyproject.toml``). On any other
version :func:`install` raises :class:`UnsupportedPynetdicom` before touching anything, so
the receiver does not start. It does not fall back to plain pynetdicom, because two of the
patches are safety limits the receiver documents, not only speed: the cap on the PDU length
a peer may announce (:data:`.fastpath.MAX_PDU_READ`; plain pynetdicom reads up to 4 GiB)
and streaming each data set to the receiver's own folder, refused past 4 GiB
(:mod:`.tempfiles`). Running without them would be a silently weaker receiver.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import PermanentError
from services.receiver.fast.patching import Patch, Replaced, apply, restore

log = logging.getLogger(__name__)

#: The pynetdicom versions the patches are written and tested for (``pyproject.toml``).
SUPPORTED = ">=3.0.4,<3.1"
_LOWEST = (3, 0, 4)
_BELOW = (3, 1, 0)
DEFAULT_MAX_INSTANCE_BYTES = 4 << 30  # per received data set (see :mod:`.tempfiles`)


class UnsupportedPynetdicom(PermanentError, RuntimeError):
    """The installed pynetdicom is not one the fast path was written for."""

    code = "unsupported-pynetdicom"


@dataclass(frozen=True)
class Installation:
    """What :func:`install` replaced, with the originals :func:`uninstall` puts back."""

    pynetdicom_version: str
    replaced: tuple[Replaced, ...]

    @property
    def targets(self) -> list[str]:
        return [item.target for item in self.replaced]


_lock = threading.Lock()
_active: Installation | None = None


def pynetdicom_version() -> str:
    import pynetdicom

    return str(pynetdicom.__version__)


def _parse(version: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor), int(micro or 0)


def check_version(version: str | None = None) -> str:
    """The installed pynetdicom version (or ``version``) if supported; otherwise raises
    :class:`UnsupportedPynetdicom`."""
    found = pynetdicom_version() if version is None else version
    parsed = _parse(found)
    if parsed is None or not _LOWEST <= parsed < _BELOW:
        raise UnsupportedPynetdicom(
            f"pynetdicom {found} is installed, but the receiver's fast path replaces "
            f"pynetdicom internals and supports only pynetdicom{SUPPORTED}; install "
            f"'pynetdicom{SUPPORTED}' (the version pinned in pyproject.toml)"
        )
    return found


def _patches() -> list[Patch]:
    from services.receiver.fast import commands, fastpath, tempfiles, uids, wakeups

    return [
        *fastpath.patches(),
        *commands.patches(),
        *wakeups.patches(),
        *tempfiles.patches(),
        *uids.patches(),
    ]


def install(incoming: Path, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES) -> Installation:
    """Switch this process's pynetdicom to the fast path, data sets received into
    ``incoming``; raises :class:`UnsupportedPynetdicom` (patching nothing) on a version
    other than :data:`SUPPORTED`. Already installed: only the folder and cap change."""
    global _active
    from services.receiver.fast import tempfiles

    with _lock:
        if _active is None:
            version = check_version()
            _active = Installation(version, tuple(apply(_patches())))
            log.info(
                "event=pynetdicom_patched version=%s attributes=%d",
                version,
                len(_active.replaced),
            )
        tempfiles.configure(incoming, max_bytes)
        return _active


def uninstall() -> Installation | None:
    """Put back every attribute :func:`install` replaced; the installation undone, or None
    when nothing was installed."""
    global _active
    from services.receiver.fast import tempfiles

    with _lock:
        undone, _active = _active, None
        if undone is not None:
            restore(undone.replaced)
            tempfiles.configure(None)
        return undone


def current() -> Installation | None:
    """The installation in force, if any."""
    return _active


@contextmanager
def installed(
    incoming: Path, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
) -> Iterator[Installation]:
    """:func:`install` for the duration of the block; undone on exit unless it was already
    installed before the block."""
    before = current()
    installation = install(incoming, max_bytes)
    try:
        yield installation
    finally:
        if before is None:
            uninstall()
