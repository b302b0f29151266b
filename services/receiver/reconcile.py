"""Start-up reconciliation of storage with the index.

An instance is renamed into ``STORAGE_DIR/<study>/<series>/<sop>.dcm`` before its row is
committed, so a receiver killed in between leaves a durable file without a row, and on
SQLite (WAL, ``synchronous=NORMAL``) a power loss can drop the last committed rows of files
that are on disk. :func:`reconcile` runs once per start, before the SCP accepts
associations: each ``.dcm`` file without a matching row is indexed through
:meth:`InstanceStore.store`, exactly as a receipt would be, so its study becomes pending
again and completes through the study tracker (a study that was already complete gets a
new job, like a late instance). Files that cannot be indexed are moved to
``STORAGE_DIR/.quarantine/`` with a log line, never deleted. A file whose SOP Instance UID
is indexed under another study, series, patient or SOP class (or whose series is indexed
under another study) never moves that row: the store refuses it like a receipt and moves
it to ``STORAGE_DIR/.quarantine/conflicts/``.

Only series folders modified since the last successful scan (minus a margin for clock
skew and coarse timestamps) are read; the time of that scan is kept in
``STORAGE_DIR/.reconciled`` (not written while storage holds no series). No watermark,
or an empty index, means a full scan. A watermark that cannot be written (a full volume)
never stops the start: its temporary file is removed, the report says it is due
(:attr:`ReconcileReport.watermark_due`) and :func:`write_watermark_later` retries it in the
background; until then the next start scans everything again (slower, never wrong).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from sqlalchemy import bindparam, select, text

from services.core.backoff import Backoff
from services.core.errors import PermanentError
from services.core.storage import fsync_dir
from services.core.uids import is_valid_uid
from services.receiver.fast.tempfiles import HEAD_BYTES
from services.receiver.index import HeaderError, InstanceHeader, parse_header
from services.receiver.store import (
    INSTANCES,
    QUARANTINE,
    InstanceConflict,
    InstanceStore,
    Outcome,
    Received,
)

log = logging.getLogger(__name__)

WATERMARK = ".reconciled"
#: a partial watermark of another process older than this is a leftover (a write takes ms)
PARTIAL_MAX_AGE_SECONDS = 60.0
BATCH = 500
_UNDEFINED = 0xFFFFFFFF
_KNOWN = text(
    "SELECT sop_instance_uid, path, size, sha256 FROM instances WHERE sop_instance_uid IN :sops"
).bindparams(bindparam("sops", expanding=True))


@dataclass
class ReconcileReport:
    """What one reconciliation did; logged as one line."""

    full: bool
    series_scanned: int = 0
    series_skipped: int = 0
    files_checked: int = 0
    indexed: int = 0
    quarantined: int = 0
    failed: int = 0
    #: the scan's start time when its watermark could not be written (retry it later)
    watermark_due: float | None = None


class Unusable(PermanentError):
    """A stored file that cannot be indexed; ``reason`` is safe to log."""

    code = "unindexable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- watermark


def read_watermark(root: Path) -> float | None:
    """Start time (epoch seconds) of the last complete scan, or None."""
    try:
        value = json.loads((root / WATERMARK).read_text())["scanned_at"]
        return float(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_watermark(root: Path, scanned_at: float) -> None:
    """Replace the watermark atomically (temporary file, fsync, rename, folder fsync); on
    failure (ENOSPC…) the temporary file is removed and the error raised."""
    temp = root / f"{WATERMARK}.{os.getpid()}.part"
    try:
        with open(temp, "w") as handle:
            json.dump({"scanned_at": scanned_at}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, root / WATERMARK)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def remove_partial_watermarks(
    root: Path, *, older_than: float = PARTIAL_MAX_AGE_SECONDS, now: float | None = None
) -> int:
    """Remove ``.reconciled.<pid>.part`` files left by killed processes (this process's own
    at any age, others' once ``older_than`` seconds old); returns how many went."""
    now = time.time() if now is None else now
    own = f"{WATERMARK}.{os.getpid()}.part"
    removed = 0
    for path in root.glob(f"{WATERMARK}.*.part"):
        try:
            if path.name != own and now - path.stat().st_mtime < older_than:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def write_watermark_later(
    root: Path, scanned_at: float, stop: threading.Event, *, first: float = 1.0, cap: float = 60.0
) -> bool:
    """Retry :func:`write_watermark` (``core.backoff``) until written or ``stop``; a newer
    watermark written meanwhile (another receiver's scan) is kept. True once done."""
    backoff = Backoff(first, cap)
    while not stop.is_set():
        current = read_watermark(root)
        if current is not None and current >= scanned_at:
            return True
        try:
            write_watermark(root, scanned_at)
        except OSError as exc:
            delay = backoff.failed()
            log.warning(
                "event=watermark_not_written attempt=%d retry_in=%.1fs errno=%s",
                backoff.failures,
                delay,
                errno_name(exc),
            )
            stop.wait(delay)
            continue
        log.info("event=watermark_written after_attempts=%d", backoff.failures)
        return True
    return False


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)


# --------------------------------------------------------------------------- scanning


def series_folders(
    root: Path, since: float | None, report: ReconcileReport
) -> Iterator[tuple[str, str, Path]]:
    """``(study, series, folder)`` for each series folder modified at or after ``since``
    (every one when ``since`` is None); other names (``.tmp``, ``.quarantine``) are left."""
    with os.scandir(root) as studies:
        study_entries = sorted((e for e in studies if is_valid_uid(e.name)), key=_name)
    for study in study_entries:
        if not study.is_dir(follow_symlinks=False):
            continue
        with os.scandir(study.path) as children:
            series_entries = sorted((e for e in children if is_valid_uid(e.name)), key=_name)
        for series in series_entries:
            if not series.is_dir(follow_symlinks=False):
                continue
            if since is not None and series.stat(follow_symlinks=False).st_mtime < since:
                report.series_skipped += 1
                continue
            yield study.name, series.name, Path(series.path)


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _digest(path: Path) -> tuple[int, str, bytes]:
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        handle.seek(0)
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
        return handle.tell(), sha, head


def check_whole(path: Path, size: int) -> None:
    """Raise :class:`Unusable` when the file ends before its last data element does (the
    data of a new file is fsync'ed after its rename, so a power cut can leave it short)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, defer_size=1024)
        except Exception as exc:  # pydicom raises many kinds on damaged input
            raise Unusable(f"unreadable data set: {exc.__class__.__name__}") from exc
    if any("before delimiter" in str(w.message) for w in caught):
        raise Unusable("truncated")  # an undefined-length element never closed
    for tag in ds.keys():  # noqa: SIM118  (iterating ds itself converts every element)
        element = ds.get_item(tag, keep_deferred=True)
        if (
            isinstance(element, RawDataElement)
            and element.length != _UNDEFINED
            and element.value_tell + element.length > size
        ):
            raise Unusable("truncated")


def _header(path: Path, key: str, head: bytes, size: int) -> InstanceHeader:
    try:
        header = parse_header(path, head=head)
    except HeaderError as exc:
        raise Unusable(exc.reason) from exc
    expected = (
        f"{header.study_instance_uid}/{header.series_instance_uid}/{header.sop_instance_uid}.dcm"
    )
    if expected != key:
        raise Unusable("misplaced")  # not where the receiver would have put it
    check_whole(path, size)
    return header


# --------------------------------------------------------------------------- reconcile


class Reconciler:
    """Indexes the unindexed files of one storage root through ``store``."""

    def __init__(self, store: InstanceStore, *, margin_seconds: float) -> None:
        self.store = store
        self.root = store.storage.root
        self.margin_seconds = margin_seconds

    def run(self, clock: Callable[[], float] = time.time) -> ReconcileReport:
        started = clock()
        remove_partial_watermarks(self.root)
        watermark = read_watermark(self.root)
        if watermark is not None and self._index_empty():
            watermark = None  # a new or emptied database: everything on disk is unknown
        since = None if watermark is None else watermark - self.margin_seconds
        report = ReconcileReport(full=since is None)
        for study, series, folder in series_folders(self.root, since, report):
            report.series_scanned += 1
            self._series(study, series, folder, report)
        if report.failed == 0 and report.series_scanned + report.series_skipped > 0:
            try:
                write_watermark(self.root, started)  # (an empty storage needs none)
            except OSError as exc:  # a full volume must not stop the start
                report.watermark_due = started
                log.warning("event=watermark_not_written attempt=0 errno=%s", errno_name(exc))
        level = logging.INFO if report.failed == 0 else logging.ERROR
        log.log(
            level,
            "event=storage_reconciled full=%s series_scanned=%d series_skipped=%d "
            "files_checked=%d indexed=%d quarantined=%d failed=%d seconds=%.2f",
            report.full,
            report.series_scanned,
            report.series_skipped,
            report.files_checked,
            report.indexed,
            report.quarantined,
            report.failed,
            clock() - started,
        )
        return report

    def _index_empty(self) -> bool:
        with self.store.db.engine.connect() as conn:
            return conn.execute(select(INSTANCES.c.id).limit(1)).first() is None

    def _series(self, study: str, series: str, folder: Path, report: ReconcileReport) -> None:
        with os.scandir(folder) as entries:
            files = sorted(
                (e.name, e.stat(follow_symlinks=False).st_size)
                for e in entries
                if e.name.endswith(".dcm") and e.is_file(follow_symlinks=False)
            )
        for start in range(0, len(files), BATCH):
            batch = files[start : start + BATCH]
            known = self._known([name[: -len(".dcm")] for name, _ in batch])
            for name, size in batch:
                report.files_checked += 1
                key = f"{study}/{series}/{name}"
                row = known.get(name[: -len(".dcm")])
                if row is not None and row.path == key and row.size == size:
                    continue
                self._restore(folder / name, key, row, report)

    def _known(self, sops: list[str]) -> dict[str, Any]:
        with self.store.db.engine.connect() as conn:
            rows = conn.execute(_KNOWN, {"sops": sops}).all()
        return {row.sop_instance_uid: row for row in rows}

    def _restore(self, path: Path, key: str, row: Any, report: ReconcileReport) -> None:
        try:
            size, sha, head = _digest(path)
            if row is not None and row.sha256 == sha:
                return  # the indexed bytes, under another name: nothing to repair
            header = _header(path, key, head, size)
        except Unusable as exc:
            self._quarantine(path, key, exc.reason, report)
            return
        except OSError as exc:
            report.failed += 1
            log.error("event=reconcile_failed file=%s reason=%s", key, exc.__class__.__name__)
            return
        received = Received(path, size, sha, "", header)
        try:
            outcome = self.store.store(received, opens_study=False)
        except InstanceConflict as exc:
            # Its SOP Instance UID is indexed under another study/series/patient (or its
            # series under another study): the row is never re-pointed; the store moved the
            # file to quarantine (logged and audited there).
            if exc.quarantined:
                report.quarantined += 1
            else:  # the indexed file itself, or the move failed: look at it each start
                report.failed += 1
            return
        except Exception as exc:  # database or disk: leave the file, retry next start
            report.failed += 1
            log.error(
                "event=reconcile_failed study=%s sop=%s reason=%s",
                header.study_instance_uid,
                header.sop_instance_uid,
                exc.__class__.__name__,
            )
            return
        if outcome is not Outcome.DUPLICATE:
            report.indexed += 1
        log.info(
            "event=instance_reconciled study=%s series=%s sop=%s outcome=%s",
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
            outcome.value,
        )

    def _quarantine(self, path: Path, key: str, reason: str, report: ReconcileReport) -> None:
        target = self.root / QUARANTINE / key
        n = 0
        while target.exists():
            n += 1
            target = self.root / QUARANTINE / f"{key}.{n}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)  # (ENOSPC on a full volume)
            os.replace(path, target)
            fsync_dir(target.parent)
            fsync_dir(path.parent)
        except OSError as exc:
            report.failed += 1
            log.error("event=quarantine_failed file=%s reason=%s", key, exc.__class__.__name__)
            return
        report.quarantined += 1
        log.warning(
            "event=instance_quarantined file=%s reason=%s to=%s",
            key,
            reason.replace(" ", "-"),
            target.relative_to(self.root),
        )


def reconcile(store: InstanceStore, *, margin_seconds: float) -> ReconcileReport:
    """Index what storage holds and the database lacks (see the module docstring)."""
    return Reconciler(store, margin_seconds=margin_seconds).run()
