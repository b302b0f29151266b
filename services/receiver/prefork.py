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
from services.receiver.assembly import Background, make_tracker, recover
from services.receiver.dicomweb.server import start_dicomweb
from services.receiver.fast.balance import LoadBoard, shared_table
from services.receiver.replicas import ReplicaLease

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

    def _spawn(self, sock: socket.socket, slot: int) -> subprocess.Popen[bytes]:
        self.board.set(0, slot)  # a restarted child starts with no connections
        args = [sys.executable, "-m", "services.receiver.child", str(sock.fileno())]
        board = [str(self.board_fd), str(self.count), str(slot)]
        child = subprocess.Popen(
            [*args, str(os.getpid()), *board],
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
        if not db.wait_until_available(self.stop_event):  # stopped while the database was away
            db.dispose()
            self.board.close()
            os.close(self.board_fd)
            log.info("event=receiver_stopped")
            return
        db.upgrade()
        broker = make_broker(self.settings.broker_url, self.settings.broker_prefix)
        relay = Relay(db, broker)
        tracker = make_tracker(self.settings, db, relay)
        lease = ReplicaLease(db)  # other receivers on this database: see .replicas
        recover(self.settings, tracker, alone=lease.join())
        sock = listen(self.settings.dicom_host, self.settings.dicom_port)
        self.children = [self._spawn(sock, slot) for slot in range(self.count)]
        background = Background(tracker, relay, lease)
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
