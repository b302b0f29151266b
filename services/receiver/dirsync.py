"""Directory fsyncs shared by instances renamed into the same folder at the same time.

Each stored instance needs its folder fsync'ed after its rename (the new name must survive
a crash before 0x0000 is answered). Associations sending one series in parallel rename into
the same folder, so while one thread fsyncs that folder, the others that renamed meanwhile
wait for the *next* fsync of it, which one of them runs for all (group commit). An fsync
only covers renames made before it started, which is what the tickets track.

A caller takes its ticket as soon as its rename is done (:meth:`DirSyncer.enter`) and waits
for it later (:meth:`DirSyncer.wait`), after the fsync of the file itself: a folder fsync
that another thread starts in between covers the rename, so the file's and the folder's
fsyncs overlap instead of following each other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from services.core.storage import fsync_dir


@dataclass
class _Folder:
    requested: int = 0  # tickets handed out: renames that need an fsync
    synced: int = 0  # every ticket up to this one is covered by a finished fsync
    running: bool = False


@dataclass(frozen=True)
class Ticket:
    """A rename that needs an fsync of its folder (:meth:`DirSyncer.enter`)."""

    folder: Path
    state: _Folder
    number: int


class DirSyncer:
    """``sync(folder)`` returns once an fsync of ``folder`` that started after the call
    has finished; concurrent callers share one. ``enter``/``wait`` split it in two."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._folders: dict[Path, _Folder] = {}
        self.fsyncs = 0  # for tests and benchmarks

    def sync(self, folder: Path) -> None:
        self.wait(self.enter(folder))

    def enter(self, folder: Path) -> Ticket:
        """Book a rename just made into ``folder``: any fsync of it from now on covers it."""
        with self._cond:
            state = self._folders.setdefault(folder, _Folder())
            state.requested += 1
            return Ticket(folder, state, state.requested)

    def wait(self, ticket: Ticket) -> None:
        """Return once an fsync that started after ``ticket`` was taken has finished,
        running it when no other thread is. A ticket is waited for once."""
        folder, state = ticket.folder, ticket.state
        with self._cond:
            # The state stays registered while a ticket of it is not covered (see _forget),
            # so every waiter of one folder elects its leader on the same state.
            while state.synced < ticket.number:
                if not state.running:
                    state.running = True
                    cover = state.requested  # renames done before this fsync starts
                    break
                self._cond.wait()
            else:
                self._forget(folder, state)
                return
        done = False
        try:
            fsync_dir(folder)
            done = True
        finally:
            with self._cond:
                state.running = False
                self.fsyncs += 1
                if done:
                    state.synced = max(state.synced, cover)
                self._forget(folder, state)
                self._cond.notify_all()  # the covered return, the others elect a leader

    def _forget(self, folder: Path, state: _Folder) -> None:
        idle = not state.running and state.synced == state.requested
        if idle and self._folders.get(folder) is state:
            del self._folders[folder]
