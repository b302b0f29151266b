"""Several receivers on one database: which one may clear what a dead receiver left.

Every running receiver (its supervising process) holds a *shared* PostgreSQL advisory lock
(:data:`REPLICA_LOCK`) for as long as it runs. At start-up, before it listens, a receiver
asks for the same lock *exclusively*, without waiting. It is granted only when no other
receiver is running; then every association count in ``studies.open_associations`` and
every temporary file is a leftover and may be cleared. When it is refused, the counts
include live associations of the siblings and stay as they are: a count left by a killed
sibling would only turn off the release shortcut for that study (completion on
``STUDY_IDLE_SECONDS`` instead); :mod:`.holds` takes such counts off instead. For that each
receiver also holds a lock of its own, ``(LEASE_CLASS, number)`` with a number from the
``receiver_lease_seq`` sequence, under which its SCP processes book their counts; the lease
keeper looks for the leases of dead receivers every second (:class:`.holds.StaleHolds`).

Completion itself needs no lease: the study tracker claims a study with a conditional
``UPDATE`` that takes the row's lock (:meth:`services.receiver.tracker.StudyTracker.complete`),
so of several trackers exactly one creates the job.

The lock lives on one connection; if that connection is lost (a database restart),
:meth:`ReplicaLease.keep` takes the lock again on a new one. SQLite serves one host and one
receiver: the lease is always granted there.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, text

from services.core.db import Database
from services.receiver.holds import LEASE_CLASS, StaleHolds

log = logging.getLogger(__name__)

#: Advisory lock key of the receivers (an arbitrary bigint, "nfrecv" in ASCII).
REPLICA_LOCK = 0x6E66_7265_6376

_TRY_ALONE = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK_ALONE = text("SELECT pg_advisory_unlock(:key)")
_SHARE = text("SELECT pg_advisory_lock_shared(:key)")
_NUMBER = text("SELECT nextval('receiver_lease_seq')")
_OWN = text("SELECT pg_try_advisory_lock(:class, :number)")
_OWN_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND granted AND mode = 'ExclusiveLock' AND objsubid = 2"
    " AND classid::bigint = :class AND objid::bigint = :number"
)
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    " AND granted AND mode = 'ShareLock'"
    " AND ((classid::bigint << 32) | objid::bigint) = :key"
)


class ReplicaLease:
    """This receiver's membership among the receivers of one database."""

    def __init__(self, db: Database, *, key: int = REPLICA_LOCK) -> None:
        self.db = db
        self.key = key
        #: this receiver's lease number (None before :meth:`join`, and on SQLite)
        self.number: int | None = None
        self.stale = StaleHolds(db)
        self._conn: Connection | None = None

    def join(self) -> bool:
        """Become a member; True when no other receiver is running (start-up clean-up of
        shared state is then safe). Call before the SCP listens; safe to call again after
        a failure (the lease number is kept)."""
        if self.db.is_sqlite:
            return True
        self._drop()
        conn = self._connect()
        if self.number is None:
            self.number = int(conn.execute(_NUMBER).scalar_one())
        alone = bool(conn.execute(_TRY_ALONE, {"key": self.key}).scalar())
        conn.execute(_SHARE, {"key": self.key})
        if alone:
            conn.execute(_UNLOCK_ALONE, {"key": self.key})
        self._take_own(conn)
        log.info("event=receiver_lease_joined alone=%s lease=%d", alone, self.number)
        return alone

    def keep(self) -> None:
        """Check the locks are still held; take them again on a new connection if lost."""
        if self.db.is_sqlite:
            return
        try:
            if self._conn is not None and self._holds(self._conn):
                return
        except Exception:
            log.warning("event=receiver_lease_lost")
        self._drop()
        conn = self._connect()
        conn.execute(_SHARE, {"key": self.key})
        self._take_own(conn)
        log.info("event=receiver_lease_retaken lease=%s", self.number)

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """:meth:`keep` every ``interval`` seconds until ``stop``, then clear the counts of
        dead receivers (:class:`.holds.StaleHolds`); errors are retried."""
        while not stop.wait(interval):
            try:
                self.keep()
                if not self.db.is_sqlite:
                    self.stale.sweep()
            except Exception as exc:
                log.warning("event=receiver_lease_error error=%s", type(exc).__name__)

    def _holds(self, conn: Connection) -> bool:
        if not conn.execute(_HELD, {"key": self.key}).scalar():
            return False
        own = {"class": LEASE_CLASS, "number": self.number}
        return self.number is None or bool(conn.execute(_OWN_HELD, own).scalar())

    def _take_own(self, conn: Connection) -> None:
        if self.number is None:
            return
        if not conn.execute(_OWN, {"class": LEASE_CLASS, "number": self.number}).scalar():
            raise RuntimeError(f"receiver lease {self.number} is held by another session")

    def leave(self) -> None:
        """Give the lock back (closing the connection would too)."""
        self._drop()

    def _connect(self) -> Connection:
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except Exception:
            conn.invalidate()  # a broken connection: never back to the pool with the lock
        finally:
            conn.close()
