"""STOW-RS ingest: a request body spooled part by part to temporary files, then each part
stored as a C-STORE'd instance would be (:func:`services.receiver.handlers.store_file`).

Two phases, so a malformed request stores nothing:

1. :class:`Spool` receives the whole multipart body; every part goes to its own
   :class:`~services.receiver.fast.tempfiles.HashingFile` (hashed as it arrives, never
   held in memory). A body that is not a well-formed ``multipart/related`` of
   ``application/dicom`` parts, a part over ``STOW_MAX_INSTANCE_MB`` or a body over
   ``STOW_MAX_REQUEST_MB`` raises :class:`StowRefused` (4xx) and every spooled file is
   deleted.
2. :func:`store_parts` stores the parts one by one: file durable (fsync + rename) and row
   committed before the next, with the C-STORE path's header checks, UID conflict rules
   (quarantine + audit) and out-of-resources refusals. The response is sent only after
   this phase, so a 200 always means durable and indexed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from services.receiver import statuses
from services.receiver.associations import AssociationState, Registry
from services.receiver.dicomweb.multipart import (
    Event,
    MediaType,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from services.receiver.dicomweb.response import InstanceResult
from services.receiver.fast.tempfiles import HashingFile, discard
from services.receiver.handlers import store_file, store_received
from services.receiver.index import HeaderError, parse_header
from services.receiver.store import InstanceStore

log = logging.getLogger("services.receiver")

DICOM = "application/dicom"
MAX_PARTS = 10_000
#: Stability rules (``STABILITY_RULES``) and the index name this as the calling AE of
#: instances stored by STOW-RS.
STOW_AET = "DICOMWEB"


class StowRefused(Exception):
    """The request as a whole is refused: nothing of it is stored. ``status`` is the HTTP
    status (400, 413 or 415), ``reason`` safe to log and to send back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_request_type(header: str | None) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` request body;
    :class:`StowRefused` 415 for any other media type (PS3.18 10.5.1.2), 400 for a bad
    boundary."""
    media = MediaType.parse(header)
    if media.value != "multipart/related":
        raise StowRefused(415, "Content-Type must be multipart/related; type=application/dicom")
    root = media.params.get("type", DICOM).lower()
    if root != DICOM:
        raise StowRefused(415, "only application/dicom parts are supported (no metadata+bulk)")
    try:
        return boundary_of(media)
    except MultipartError as exc:
        raise StowRefused(400, exc.reason) from None


@dataclass
class Spool:
    """The parts of one request, received to temporary files in ``folder``."""

    folder: Path
    boundary: bytes
    max_part_bytes: int
    max_request_bytes: int
    max_parts: int = MAX_PARTS
    parts: list[HashingFile] = field(default_factory=list)
    received: int = 0

    def __post_init__(self) -> None:
        self._reader = MultipartReader(self.boundary)
        self._current: HashingFile | None = None

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_request_bytes:
            raise StowRefused(413, "request body larger than STOW_MAX_REQUEST_MB")
        try:
            events = self._reader.feed(chunk)
        except MultipartError as exc:
            raise StowRefused(400, exc.reason) from None
        for event in events:
            self._apply(event)

    def finish(self) -> list[HashingFile]:
        """The body ended: the parts, or :class:`StowRefused` 400 if it was cut short."""
        try:
            self._reader.close()
        except MultipartError as exc:
            raise StowRefused(400, exc.reason) from None
        if not self.parts:
            raise StowRefused(400, "no parts in the multipart body")
        return list(self.parts)

    def discard(self) -> None:
        """Delete every spooled file (a refused or abandoned request)."""
        for part in self.parts:
            discard(part)
        self.parts.clear()
        self._current = None

    def _apply(self, event: Event) -> None:
        if isinstance(event, PartStart):
            media = MediaType.parse(event.content_type or DICOM)
            if media.value != DICOM:
                raise StowRefused(415, "every part must be application/dicom")
            if len(self.parts) >= self.max_parts:
                raise StowRefused(413, f"more than {self.max_parts} parts in one request")
            self._current = HashingFile(self.folder, self.max_part_bytes)
            self.parts.append(self._current)
        elif isinstance(event, PartData):
            assert self._current is not None
            self._current.write(event.data)
            if self._current.overflow:
                raise StowRefused(413, "a part is larger than STOW_MAX_INSTANCE_MB")
        elif isinstance(event, PartEnd):
            assert self._current is not None
            self._current.close()
            self._current = None


def _status_of(status: int | Dataset) -> int:
    return int(status.Status) if isinstance(status, Dataset) else int(status)


def store_part(
    part: HashingFile,
    store: InstanceStore,
    registry: Registry,
    state: AssociationState,
    *,
    study: str | None,
) -> InstanceResult:
    """Store one spooled part; its result for the response. The temporary file is gone
    afterwards (moved into storage or quarantine, or deleted)."""
    path = Path(part.name)
    try:
        if part.failed or part.overflow:  # full volume while spooling: 0xA700
            return InstanceResult("", "", _status_of(store_received(part, store, registry, state)))
        part.close()
        try:
            header = parse_header(path, head=bytes(part.head))
        except HeaderError:  # refused, logged and audited as C-STORE does
            status = store_file(
                path, part.size, part.hexdigest(), bytes(part.head), store, registry, state
            )
            return InstanceResult("", "", _status_of(status))
        if study is not None and header.study_instance_uid != study:
            state.failed += 1
            log.warning(
                "event=instance_refused reason=study-uid-mismatch calling_aet=%s peer=%s",
                state.calling_aet,
                state.peer,
            )
            status = statuses.STUDY_UID_MISMATCH
        else:
            status = store_file(
                path,
                part.size,
                part.hexdigest(),
                bytes(part.head),
                store,
                registry,
                state,
                header=header,
            )
        return InstanceResult(header.sop_class_uid, header.sop_instance_uid, _status_of(status))
    finally:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def store_parts(
    parts: list[HashingFile],
    store: InstanceStore,
    registry: Registry,
    state: AssociationState,
    *,
    study: str | None,
) -> list[InstanceResult]:
    """Store every part in order, then book the request's end with the study tracker.

    A request is never a release: senders split a study over many requests (Orthanc's
    DICOMweb client sends a few instances per request), so its end says nothing about the
    study's, and completion waits for the study to be idle (``STUDY_IDLE_SECONDS``, or the
    ``DICOMWEB`` entry of ``STABILITY_RULES``). A request stored to its end does clear the
    "interrupted" mark a restart left on its studies, as a released association does.
    Parts not reached (the process stopping) are deleted."""
    results: list[InstanceResult] = []
    try:
        for part in parts:
            results.append(store_part(part, store, registry, state, study=study))
    finally:
        for part in parts[len(results) :]:
            discard(part)
        registry.end(state, released=False)
    registry.tracker.transfer_completed(state.studies | state.resent)
    return results
