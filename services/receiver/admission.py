"""Which connections an SCP process keeps: pending ones apart from associations.

A connection is **pending** from its accept until its A-ASSOCIATE-RQ has arrived whole;
then it is **negotiated** (it holds one of ``max_associations`` slots while pynetdicom
answers and runs the association). So peers that connect and say nothing (or trickle a
few bytes) never take the slot of a sender that works:

* a pending connection has a deadline (the ACSE timeout): past it, it is closed;
* at most ``max_pending`` pending connections per process: a new one ends the oldest;
* at most ``max_per_peer`` connections (pending and negotiated) per source address: a new
  one ends that address's oldest pending connection, or is refused when it has none.

A newcomer is therefore never refused because of idle peers elsewhere; only an address
whose associations are all in use is turned away. Pure book-keeping (no sockets are
touched here): the server closes what :meth:`Admission.admit` and :meth:`Admission.overdue`
hand back. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # what identifies a connection (the server: its socket)


@dataclass
class _Connection:
    peer: str
    deadline: float  # monotonic; a pending connection is closed after it
    negotiated: bool = False


class Admission(Generic[K]):
    def __init__(
        self,
        *,
        max_associations: int,
        max_pending: int,
        max_per_peer: int,
        negotiation_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_associations = max_associations
        self.max_pending = max(1, max_pending)
        self.max_per_peer = max(1, max_per_peer)
        self.negotiation_timeout = negotiation_timeout
        self.clock = clock
        self._connections: dict[K, _Connection] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def admit(self, key: K, peer: str) -> tuple[bool, list[K]]:
        """A new connection ``key`` from address ``peer``: whether to keep it, and the
        pending connections it displaces (the caller closes them)."""
        with self._lock:
            displaced: list[K] = []
            mine = [k for k, c in self._connections.items() if c.peer == peer]
            if len(mine) >= self.max_per_peer:
                oldest = self._oldest_pending(mine)
                if oldest is None:  # every one of them is a working association
                    return False, []
                displaced.append(self._drop(oldest))
            pending = [k for k, c in self._connections.items() if not c.negotiated]
            if len(pending) >= self.max_pending:
                oldest = self._oldest_pending(pending)
                if oldest is not None:
                    displaced.append(self._drop(oldest))
            deadline = self.clock() + self.negotiation_timeout
            self._connections[key] = _Connection(peer, deadline)
            return True, displaced

    def negotiate(self, key: K) -> bool:
        """The A-ASSOCIATE-RQ of ``key`` has arrived: whether an association slot is free
        (it is then taken until :meth:`release`)."""
        with self._lock:
            connection = self._connections.get(key)
            if connection is None:  # displaced or timed out meanwhile
                return False
            if connection.negotiated:
                return True
            if self.associations() >= self.max_associations:
                return False
            connection.negotiated = True
            return True

    def release(self, key: K) -> None:
        """``key`` is closed (idempotent)."""
        with self._lock:
            self._connections.pop(key, None)

    def overdue(self) -> list[K]:
        """Pending connections past their deadline, forgotten here; the caller closes them."""
        now = self.clock()
        with self._lock:
            late = [
                k for k, c in self._connections.items() if not c.negotiated and now > c.deadline
            ]
            return [self._drop(k) for k in late]

    def forget(self, closed: Callable[[K], bool]) -> None:
        """Drop the connections for which ``closed`` is true (closed without a word)."""
        with self._lock:
            for key in [k for k in self._connections if closed(k)]:
                del self._connections[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._connections)

    def associations(self) -> int:
        """Negotiated connections (the caller holds the lock or accepts a snapshot)."""
        return sum(1 for c in self._connections.values() if c.negotiated)

    def pending(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if not c.negotiated)

    def _oldest_pending(self, keys: list[K]) -> K | None:
        return next((k for k in keys if not self._connections[k].negotiated), None)

    def _drop(self, key: K) -> K:
        del self._connections[key]
        return key
