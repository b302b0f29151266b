"""Who holds each open association count, so that a dead receiver's counts can be cleared.

``studies.open_associations`` turns off the release shortcut of completion while an
association carries the study (:mod:`.completion`). A receiver killed mid-association never
takes its count off, and while another receiver runs nobody may simply reset the counts
(:mod:`.replicas`). So every count is also booked in ``association_holds`` under its
:class:`Holder`: the receiver's replica lease number and the SCP process (its slot; -1 for
the supervisor's STOW-RS). An association's end takes one off its own holder's row and,
only if there was one, off the study.

The counts of a holder go when it is known dead:

* an SCP process that died alone: its supervisor clears ``(lease, slot)`` before the
  restart (:func:`clear_process`);
* a whole receiver: its lease (an advisory lock on its own connection) is gone. Every
  running receiver looks for such leases (:class:`StaleHolds`, in the lease keeper's loop,
  from its start); one missing for ``grace_seconds`` in a row is cleared: its holds are
  deleted and taken off the studies, which are marked interrupted as after a restart. The
  grace covers a database cut, when every lease is lost until its keeper takes it again.

PostgreSQL only (SQLite serves one receiver, which resets counts at its start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, text

from services.core.db import Database

log = logging.getLogger(__name__)

#: first key of every receiver's own lease lock ``(LEASE_CLASS, number)``: "nfrc"
LEASE_CLASS = 0x6E66_7263
#: the SCP "process" of transfers received by the supervisor itself (STOW-RS)
SUPERVISOR = -1
#: a lease missing this long is dead (lease keepers retake theirs every second or so)
GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Holder:
    """One receiver process that books association counts."""

    lease: int
    process: int


OPEN_HOLD = text(
    "INSERT INTO association_holds (study_id, lease, process, count)"
    " VALUES (:id, :lease, :process, 1)"
    " ON CONFLICT (study_id, lease, process)"
    " DO UPDATE SET count = association_holds.count + 1"
)
_END = text(
    "WITH ended AS ("
    " UPDATE association_holds h SET count = h.count - 1 FROM studies s"
    " WHERE s.id = h.study_id AND s.study_instance_uid IN :uids"
    " AND h.lease = :lease AND h.process = :process AND h.count > 0"
    " RETURNING h.study_id)"
    " UPDATE studies SET open_associations = GREATEST(open_associations - 1, 0)"
    " WHERE id IN (SELECT study_id FROM ended)"
).bindparams(bindparam("uids", expanding=True))
_EMPTY = text(
    "DELETE FROM association_holds WHERE lease = :lease AND process = :process AND count <= 0"
)
_MISSING = text(
    "SELECT DISTINCT h.lease FROM association_holds h WHERE NOT EXISTS ("
    " SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.objsubid = 2 AND l.classid::bigint = :class AND l.objid::bigint = h.lease)"
)
#: the holds of the given leases whose lock nobody holds (checked again here), taken off
_CLEAR_LEASES = text(
    "WITH gone AS (DELETE FROM association_holds h WHERE h.lease IN :leases"
    " AND NOT EXISTS ("
    " SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.objsubid = 2 AND l.classid::bigint = :class AND l.objid::bigint = h.lease)"
    " RETURNING h.study_id, h.count),"
    " totals AS (SELECT study_id, sum(count) AS n FROM gone GROUP BY study_id)"
    " UPDATE studies s SET open_associations = GREATEST(s.open_associations - totals.n, 0),"
    " interrupted_at = :now FROM totals WHERE s.id = totals.study_id"
).bindparams(bindparam("leases", expanding=True))
_CLEAR_PROCESS = text(
    "WITH gone AS (DELETE FROM association_holds h"
    " WHERE h.lease = :lease AND h.process = :process RETURNING h.study_id, h.count),"
    " totals AS (SELECT study_id, sum(count) AS n FROM gone GROUP BY study_id)"
    " UPDATE studies s SET open_associations = GREATEST(s.open_associations - totals.n, 0),"
    " interrupted_at = :now FROM totals WHERE s.id = totals.study_id"
)


def end_holds(conn: Connection, holder: Holder, study_uids: list[str]) -> None:
    """An association of ``holder`` carrying ``study_uids`` ended: one count off each of
    its holds and off those studies (a hold already cleared takes nothing off)."""
    params = {"uids": study_uids, "lease": holder.lease, "process": holder.process}
    conn.execute(_END, params)
    conn.execute(_EMPTY, params)


def clear_process(db: Database, holder: Holder, now: datetime | None = None) -> int:
    """Clear the holds of one dead SCP process; returns the studies it touched."""
    with db.engine.begin() as conn:
        result = conn.execute(
            _CLEAR_PROCESS,
            {"lease": holder.lease, "process": holder.process, "now": now or datetime.now(UTC)},
        )
    return int(result.rowcount or 0)


class StaleHolds:
    """Finds leases that hold counts but whose receiver is gone, and clears them once each
    has been missing for ``grace_seconds`` (checked again in the clearing statement)."""

    def __init__(
        self,
        db: Database,
        *,
        grace_seconds: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._missing_since: dict[int, float] = {}

    def missing(self) -> set[int]:
        with self.db.engine.connect() as conn:
            return {int(lease) for (lease,) in conn.execute(_MISSING, {"class": LEASE_CLASS})}

    def due(self, missing: Iterable[int]) -> list[int]:
        """Remember when each lease was first seen missing; those missing long enough."""
        now = self.clock()
        seen = {lease: self._missing_since.get(lease, now) for lease in missing}
        self._missing_since = seen
        return sorted(lease for lease, since in seen.items() if now - since >= self.grace_seconds)

    def sweep(self) -> int:
        """One look: clears what is due; returns the studies whose counts were lowered."""
        due = self.due(self.missing())
        if not due:
            return 0
        with self.db.engine.begin() as conn:
            result = conn.execute(
                _CLEAR_LEASES, {"leases": due, "class": LEASE_CLASS, "now": datetime.now(UTC)}
            )
        studies = int(result.rowcount or 0)
        for lease in due:
            self._missing_since.pop(lease, None)
        log.warning("event=stale_associations_cleared leases=%s studies=%d", due, studies)
        return studies
