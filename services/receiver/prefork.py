"""``noduleflow receiver``: one listening socket shared by several SCP processes.

One Python process is CPU-bound near 200 images/s, so the supervisor binds the port once,
starts ``receiver_processes`` children that all accept on that socket (the least loaded one
takes each connection, see :mod:`services.receiver.fast.balance`), and runs the study tracker and
the outbox relay itself.
Children die with the supervisor (``PR_SET_PDEATHSIG``); a child that dies alone is
restarted. SIGTERM stops everything cleanly.
Several receivers (other hosts, or other ports of one host) may share one PostgreSQL
database and ``STORAGE_DIR``; :mod:`services.receiver.replicas` says which start-up clean-up
each may do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from services.core.broker import make_broker
from services.core.db import Database
from services.core.outbox import Relay
from services.core.retention.loop import start_retention
from services.core.settings import Settings
from services.core.startup import StartCancelled, retry_start_step
from services.receiver.assembly import Background, after_recovery, make_tracker, recover
from services.receiver.dicomweb.server import start_dicomweb
from services.receiver.fast.balance import LoadBoard, shared_table
from services.receiver.holds import SUPERVISOR, Holder, clear_process
from services.receiver.reconcile import ReconcileReport
from services.receiver.replicas import ReplicaLease
from services.receiver.tracker import StudyTracker

log = logging.getLogger(__name__)

MAX_AUTO_PROCESSES = 4


def process_count(settings: Settings, cpus: int | None = None) -> int:
    """``receiver_processes``, or one per CPU (at most 4) when it is 0."""
    if settings.receiver_processes > 0:
        return settings.receiver_processes
    return max(1, min(cpus or os.cpu_count() or 1, MAX_AUTO_PROCESSES))


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = process_count(settings)
        self.stop_event = threading.Event()
        self.children: list[subprocess.Popen[bytes] | None] = []
        self.board_fd = shared_table(self.count)
        self.board = LoadBoard(self.board_fd, self.count, 0)
        self.db: Database | None = None
        self.lease: ReplicaLease | None = None

    def _spawn(self, sock: socket.socket, slot: int) -> subprocess.Popen[bytes]:
        self.board.set(0, slot)  # a restarted child starts with no connections
        args = [sys.executable, "-m", "services.receiver.child", str(sock.fileno())]
        board = [str(self.board_fd), str(self.count), str(slot)]
        lease = [] if self.lease is None or self.lease.number is None else [str(self.lease.number)]
        child = subprocess.Popen(
            [*args, str(os.getpid()), *board, *lease],
            pass_fds=[sock.fileno(), self.board_fd],
            stdin=subprocess.PIPE,
        )
        assert child.stdin is not None
        with child.stdin:  # settings (secrets included) through a pipe, not the environment
            child.stdin.write(self.settings.model_dump_json().encode())
        return child

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        db = Database(self.settings.database_url)
        self.db = db
        lease = self.lease = ReplicaLease(db)  # other receivers on this database: .replicas
        broker = make_broker(self.settings.broker_url, self.settings.broker_prefix)
        relay = Relay(db, broker)
        try:
            tracker, report = self._start_up(db, lease, relay)
        except StartCancelled:  # stopped while the database was away
            lease.leave()
            broker.close()
            db.dispose()
            self.board.close()
            os.close(self.board_fd)
            log.info("event=receiver_stopped")
            return
        sock = listen(self.settings.dicom_host, self.settings.dicom_port)
        self.children = [self._spawn(sock, slot) for slot in range(self.count)]
        background = Background(tracker, relay, lease, after_recovery(self.settings, report))
        background.start()
        retention = start_retention(self.settings, db)  # this process owns storage
        dicomweb = start_dicomweb(self.settings, db, tracker)  # STOW-RS, when a port is set
        log.info("event=receiver_started processes=%d port=%s", self.count, sock.getsockname()[1])
        try:
            self._watch(sock)
        finally:
            if dicomweb is not None:
                dicomweb.stop()
            self._stop_children()
            background.stop()
            if retention is not None:
                retention.stop()
            lease.leave()
            sock.close()
            self.board.close()
            os.close(self.board_fd)
            broker.close()
            db.dispose()
            log.info("event=receiver_stopped")

    def _start_up(
        self, db: Database, lease: ReplicaLease, relay: Relay
    ) -> tuple[StudyTracker, ReconcileReport]:
        """Wait for the database, then upgrade, join the replicas and recover; each step is
        retried while the database comes and goes (:mod:`services.core.startup`)."""
        if not db.wait_until_available(self.stop_event):
            raise StartCancelled("stopped while waiting for the database")
        retry_start_step(db.upgrade, self.stop_event, name="schema-upgrade")
        alone = retry_start_step(lease.join, self.stop_event, name="replica-lease")
        tracker = make_tracker(self.settings, db, relay, holder=self._holder(SUPERVISOR))
        report = retry_start_step(
            lambda: recover(self.settings, tracker, alone=alone), self.stop_event, name="recovery"
        )
        return tracker, report

    def _holder(self, process: int) -> Holder | None:
        number = None if self.lease is None else self.lease.number
        return None if number is None else Holder(number, process)

    def _forget(self, slot: int) -> None:
        """A child died alone: its open associations died with it (:mod:`.holds`)."""
        holder = self._holder(slot)
        if holder is None or self.db is None:
            return
        try:
            studies = clear_process(self.db, holder)
        except Exception as exc:  # the database away: the counts wait for the idle timer
            log.warning("event=child_holds_not_cleared slot=%d error=%s", slot, type(exc).__name__)
            return
        if studies:
            log.info("event=child_holds_cleared slot=%d studies=%d", slot, studies)

    def _watch(self, sock: socket.socket) -> None:
        restarts: list[float] = [0.0] * self.count
        while not self.stop_event.wait(0.5):
            for i, child in enumerate(self.children):
                if child is None or child.poll() is None:
                    continue
                log.error("event=receiver_child_died pid=%s rc=%s", child.pid, child.returncode)
                if time.monotonic() - restarts[i] < 2.0:
                    time.sleep(2.0)
                restarts[i] = time.monotonic()
                self._forget(i)
                self.children[i] = self._spawn(sock, i)

    def _stop_children(self) -> None:
        alive = [c for c in self.children if c is not None and c.poll() is None]
        for child in alive:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in alive:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
