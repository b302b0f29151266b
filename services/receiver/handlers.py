"""pynetdicom event handlers; thin, dependencies passed as bound arguments.

Bound as ``(evt.EVT_C_STORE, handle_store, [store, registry])`` and so on (see
:func:`services.receiver.scp.event_handlers`). No patient identifiers are ever logged.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from services.receiver import statuses
from services.receiver.associations import AssociationState, Registry
from services.receiver.fast.fastpath import release_requested
from services.receiver.fast.tempfiles import NO_SPACE_ERRNOS, HashingFile, discard
from services.receiver.index import HeaderError, InstanceHeader, parse_header
from services.receiver.policy import rejection_reason
from services.receiver.store import (
    InstanceConflict,
    InstanceStore,
    NoSpaceError,
    Outcome,
    Received,
)

log = logging.getLogger("services.receiver")


# --------------------------------------------------------------------------- handlers


def handle_echo(event: Event) -> int:
    """C-ECHO (PS3.7 9.1.5): always success while the process is alive."""
    return statuses.ECHO_SUCCESS


def handle_accepted(event: Event, registry: Registry) -> None:
    state = registry.open(event.assoc)
    log.info("event=association_opened calling_aet=%s peer=%s", state.calling_aet, state.peer)


def handle_released(event: Event, registry: Registry) -> None:
    registry.finish(event.assoc, released=True)


def handle_aborted(event: Event, registry: Registry) -> None:
    registry.finish(event.assoc, released=False)


def handle_conn_close(event: Event, registry: Registry) -> None:
    """Last event of every connection: drop a half-received data set, close the books."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        discard(partial)
    registry.finish(event.assoc, released=release_requested(event.assoc))


def handle_rejected(event: Event, registry: Registry) -> None:
    requestor = event.assoc.requestor
    calling, called = str(requestor.ae_title).strip(), str(event.assoc.acceptor.ae_title)
    primitive = getattr(requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", called) or called).strip()
    reason = rejection_reason(
        calling_aet=calling,
        called_aet=called,
        ae_title=registry.ae_title,
        allowed_aets=registry.allowed_aets,
    )
    peer = f"{requestor.address}:{requestor.port}"
    log.warning(
        "event=association_rejected calling_aet=%s called_aet=%s peer=%s reason=%s",
        calling,
        called,
        peer,
        reason,
    )
    registry.security_alert(actor=calling, source=peer, detail=f"association rejected: {reason}")


def _digest(path: Path) -> tuple[int, str]:
    with open(path, "rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
        return handle.tell(), sha


def conflict_status(conflict: InstanceConflict) -> Dataset:
    """C-STORE-RSP status of an instance refused for a UID conflict (PS3.4 B.2.3, Cxxx with
    Offending Element and Error Comment, PS3.7 C.4.2)."""
    status = Dataset()
    status.Status = statuses.SOP_INSTANCE_CONFLICT
    status.OffendingElement = conflict.offending_elements
    status.ErrorComment = conflict.comment
    return status


def handle_store(event: Event, store: InstanceStore, registry: Registry) -> int | Dataset:
    """C-STORE (PS3.4 B.2.2): 0x0000 only once the instance is durable and indexed."""
    state = registry.get(event.assoc)
    request: Any = event.request
    handle = getattr(request, "_dataset_file", None)
    sop_class, sop = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    if isinstance(handle, HashingFile):
        return store_received(
            handle, store, registry, state, sop_class_uid=sop_class, sop_instance_uid=sop
        )
    path = Path(event.dataset_path)
    size, sha = _digest(path)
    return store_file(
        path, size, sha, None, store, registry, state, sop_class_uid=sop_class, sop_instance_uid=sop
    )


def store_received(
    handle: HashingFile,
    store: InstanceStore,
    registry: Registry,
    state: AssociationState,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> int | Dataset:
    """Store a data set received into ``handle`` (C-STORE or one STOW-RS part); its status."""
    if handle.failed:  # not written (full volume, I/O error); the file is gone already
        state.failed += 1
        log.warning(
            "event=instance_refused reason=%s errno=%s calling_aet=%s",
            "disk-full" if handle.no_space else "storage-error",
            errno.errorcode.get(handle.error or 0, handle.error),
            state.calling_aet,
        )
        return statuses.OUT_OF_RESOURCES
    if handle.overflow:
        state.failed += 1
        log.warning("event=instance_refused reason=too-large calling_aet=%s", state.calling_aet)
        return statuses.OUT_OF_RESOURCES
    handle.close()
    return store_file(
        Path(handle.name),
        handle.size,
        handle.hexdigest(),
        bytes(handle.head),
        store,
        registry,
        state,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
    )


def store_file(
    path: Path,
    size: int,
    sha: str,
    head: bytes | None,
    store: InstanceStore,
    registry: Registry,
    state: AssociationState,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    header: InstanceHeader | None = None,
) -> int | Dataset:
    """Index and store the PS3.10 file at ``path`` for ``state``'s transfer: the header
    checks, UID conflict rules and refusals every way in shares. ``sop_class_uid`` and
    ``sop_instance_uid``, when given (C-STORE), must match the data set; ``header``, when
    the caller parsed it already (STOW-RS), is not parsed again."""
    try:
        if header is None:
            header = parse_header(
                path, head=head, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
            )
    except HeaderError as exc:
        state.failed += 1
        log.warning(
            "event=instance_refused reason=%s calling_aet=%s peer=%s",
            exc.reason.replace(" ", "-"),
            state.calling_aet,
            state.peer,
        )
        if exc.bad_uid:
            registry.security_alert(
                actor=state.calling_aet, source=state.peer, detail=f"refused: {exc.reason}"
            )
            return statuses.DATASET_MISMATCH
        return statuses.CANNOT_UNDERSTAND
    received = Received(path, size, sha, state.calling_aet, header, peer=state.peer)
    not_analysed = header.not_analysed  # stored, but never carries its study (.relevance)
    opens = not_analysed is None and header.study_instance_uid not in state.studies
    try:
        outcome = store.store(received, opens_study=opens)
    except InstanceConflict as conflict:  # logged, audited and quarantined by the store
        state.failed += 1
        return conflict_status(conflict)
    except NoSpaceError:
        refused(state, header)
        log.warning("event=instance_refused reason=disk-full calling_aet=%s", state.calling_aet)
        return statuses.OUT_OF_RESOURCES
    except Exception as exc:
        refused(state, header)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:  # filled up meanwhile
            log.warning(
                "event=instance_refused reason=disk-full errno=%s calling_aet=%s",
                errno.errorcode.get(exc.errno or 0, exc.errno),
                state.calling_aet,
            )
            return statuses.OUT_OF_RESOURCES
        log.error(
            "event=instance_not_stored reason=%s study=%s sop=%s",
            exc.__class__.__name__,
            header.study_instance_uid,
            header.sop_instance_uid,
        )
        return statuses.OUT_OF_RESOURCES
    if not_analysed is not None:
        note_not_analysed(state, header, outcome, size, not_analysed)
    elif outcome is Outcome.DUPLICATE:
        state.duplicates += 1
        state.resent.add(header.study_instance_uid)
    else:
        opened = header.study_instance_uid not in state.studies
        state.studies.add(header.study_instance_uid)
        state.stored += 1
        state.bytes += size
        if opened and state.finished:  # the connection closed while this one was stored
            registry.tracker.association_ended([header.study_instance_uid], released=False)
    if not_analysed is None:  # a sender gone on to the next study is done with the last
        registry.moved_on(state, header.study_instance_uid)
    log.debug(
        "event=instance_%s study=%s series=%s sop=%s bytes=%d",
        outcome.value,
        header.study_instance_uid,
        header.series_instance_uid,
        header.sop_instance_uid,
        size,
    )
    return statuses.SUCCESS


def refused(state: AssociationState, header: InstanceHeader) -> None:
    """Book an instance refused for want of resources (0xA700). Its study waits for the
    resend (:mod:`.completion`), unless the analysis would never use it."""
    state.failed += 1
    if header.not_analysed is None:
        state.refused[header.sop_instance_uid] = (header.study_instance_uid, header.slice_position)


def note_not_analysed(
    state: AssociationState, header: InstanceHeader, outcome: Outcome, size: int, reason: str
) -> None:
    """Book an instance the analysis never uses: counted and audited with the transfer, but
    the association is not counted as carrying its study (no completion, no new job)."""
    state.kept.add(header.study_instance_uid)
    if outcome is Outcome.DUPLICATE:
        state.duplicates += 1
    else:
        state.stored += 1
        state.bytes += size
        state.not_analysed += 1
    log.info(
        "event=instance_not_analysed reason=%s outcome=%s study=%s series=%s sop=%s calling_aet=%s",
        reason,
        outcome.value,
        header.study_instance_uid,
        header.series_instance_uid,
        header.sop_instance_uid,
        state.calling_aet,
    )
