"""One SCP process of ``noduleflow receiver`` (started by the supervisor, not by hand).

``python -m services.receiver.child FD PARENT_PID [BOARD_FD SLOTS SLOT [LEASE]]``; settings
arrive as JSON on standard input, the listening socket and the siblings' load table
(:mod:`services.receiver.fast.balance`) as inherited file descriptors. ``LEASE`` is the
supervisor's replica lease number: association counts are booked under ``(LEASE, SLOT)``
(:mod:`services.receiver.holds`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading

from pydicom import config as pydicom_config

from services.core.db import Database
from services.core.logs import setup_logging
from services.core.settings import Settings
from services.receiver.assembly import build_scp, make_tracker
from services.receiver.fast.balance import LoadBoard
from services.receiver.holds import Holder

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("event=pdeathsig_unavailable")
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    # This process only receives: UIDs that reach a path are checked by our own rule, so
    # pydicom's per-value validation (some 25 UIDs per instance) is skipped here.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    setup_logging(settings.log_level, service=f"receiver.{os.getpid()}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    db = Database(settings.database_url)
    listen_socket = socket.socket(fileno=fd)
    board = None
    holder = None
    if len(argv) >= 6:
        board_fd, slots, slot = (int(a) for a in argv[3:6])
        board = LoadBoard(board_fd, slots, slot)
        os.close(board_fd)  # the mapping stays
        if len(argv) >= 7:
            holder = Holder(int(argv[6]), slot)
    tracker = make_tracker(settings, db, holder=holder)
    scp = build_scp(settings, db, tracker, listen_socket=listen_socket, board=board)
    scp.start()
    # Everything built so far (modules, mappers, contexts) lives as long as the process:
    # out of the collector's sight, full collections no longer walk it on every instance.
    gc.freeze()
    stop.wait()
    scp.stop()
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
