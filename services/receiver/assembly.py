"""Building blocks of a receiver, shared by the in-process receiver (:mod:`.main`), the
supervisor of ``noduleflow receiver`` (:mod:`.prefork`) and its SCP processes
(:mod:`.child`): tracker, storage, SCP, start-up recovery, background threads.

Kept apart from :mod:`.main` so that :mod:`.prefork` and :mod:`.child` need not import it
(``main.run`` starts the supervisor; nothing imports back).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from services.core.db import Database
from services.core.outbox import Relay
from services.core.retention.loop import make_purger
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.core.threads import Threaded, ThreadGroup
from services.receiver import fast
from services.receiver.completion import Waits
from services.receiver.fast import tempfiles
from services.receiver.fast.balance import LoadBoard
from services.receiver.handlers import Registry
from services.receiver.holds import Holder
from services.receiver.reconcile import ReconcileReport, reconcile, write_watermark_later
from services.receiver.replicas import ReplicaLease
from services.receiver.scp import StorageSCP
from services.receiver.store import InstanceStore
from services.receiver.tracker import StudyTracker

log = logging.getLogger(__name__)

#: a background task: a name and a body that runs until its stop event is set
Task = tuple[str, Callable[[threading.Event], object]]


def make_tracker(
    settings: Settings, db: Database, relay: Relay | None = None, *, holder: Holder | None = None
) -> StudyTracker:
    return StudyTracker(
        db,
        idle_seconds=settings.study_idle_seconds,
        grace_seconds=settings.release_grace_seconds,
        on_complete=relay.wake.set if relay is not None else None,
        rules=settings.stability_rules,
        waits=Waits(
            gap_seconds=settings.gap_wait_seconds,
            incomplete_seconds=settings.incomplete_wait_seconds,
            min_lung_coverage_mm=settings.min_lung_coverage_mm,
        ),
        holder=holder,
    )


def prepare_storage(settings: Settings) -> tuple[LocalStorage, Path]:
    """Storage plus this receiver's temporary folder for incoming data sets (one per host
    and port, so receivers sharing a host never clean each other's transfers)."""
    storage = LocalStorage(settings.storage_dir)
    return storage, tempfiles.temp_folder(storage.tmp, settings.dicom_port)


def build_scp(
    settings: Settings,
    db: Database,
    tracker: StudyTracker,
    *,
    listen_socket: socket.socket | None = None,
    board: LoadBoard | None = None,
) -> StorageSCP:
    """The Storage SCP, with this process's pynetdicom switched to the fast path
    (:func:`services.receiver.fast.install`; refuses an unsupported pynetdicom)."""
    storage, incoming = prepare_storage(settings)
    fast.install(incoming)
    store = InstanceStore(
        db, storage, min_free_bytes=settings.min_free_disk_mb << 20, holder=tracker.holder
    )
    registry = Registry(
        db, tracker, ae_title=settings.ae_title, allowed_aets=list(settings.allowed_aets)
    )
    return StorageSCP(settings, store, registry, listen_socket=listen_socket, board=board)


def recover(settings: Settings, tracker: StudyTracker, *, alone: bool = True) -> ReconcileReport:
    """Start-up clean-up after a crash, before the SCP accepts anything: half-received
    files, stale association counts, stored files whose row was never committed.

    ``alone`` (no other receiver runs on this database, :mod:`.replicas`): association
    counts are reset and every temporary file of this host goes. Otherwise the counts are
    the siblings' too and stay, and only this receiver's own incoming folder is emptied
    (other temporary files of the host once they are an hour old)."""
    storage, incoming = prepare_storage(settings)
    removed = tempfiles.clean(incoming)
    removed += storage.clean_temp() if alone else tempfiles.clean(storage.tmp, older_than=3600)
    reset = tracker.reset_open_associations() if alone else 0
    log.info("event=receiver_recovered temp_removed=%d open_associations_reset=%d", removed, reset)
    # Unfinished purges first: their files have lost their rows and must not be indexed again.
    make_purger(settings, tracker.db).resume()
    store = InstanceStore(tracker.db, storage, min_free_bytes=settings.min_free_disk_mb << 20)
    return reconcile(store, margin_seconds=settings.reconcile_margin_seconds)


def after_recovery(settings: Settings, report: ReconcileReport) -> list[Task]:
    """What start-up recovery left for later: the reconciliation watermark, when it could
    not be written (a full volume), is retried in the background."""
    due = report.watermark_due
    if due is None:
        return []
    root = Path(settings.storage_dir)
    return [("watermark", lambda stop: write_watermark_later(root, due, stop))]


class Background(Threaded):
    """Tracker and relay threads (and the replica lease's keeper, and ``tasks`` such as
    :func:`after_recovery`'s), stopped together."""

    def __init__(
        self,
        tracker: StudyTracker,
        relay: Relay,
        lease: ReplicaLease | None = None,
        tasks: Sequence[Task] = (),
    ) -> None:
        self.tracker = tracker
        self.relay = relay
        self.lease = lease
        self.tasks = list(tasks)
        self.group = ThreadGroup()

    def start(self) -> None:
        self.group.restart()
        self.group.on_stop(self.relay.wake.set)
        for name, target in (("tracker", self.tracker.run), ("relay", self.relay.run)):
            self.group.spawn(f"noduleflow-{name}", target, self.stop_event)
        if self.lease is not None:
            self.group.spawn("noduleflow-lease", self.lease.run, self.stop_event)
        for name, task in self.tasks:
            self.group.spawn(f"noduleflow-{name}", task, self.stop_event)

    def stop(self) -> None:
        self.group.stop(timeout=10)
