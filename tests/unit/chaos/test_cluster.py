"""Why a chaos-suite service exited, read from its log (tests/chaos/cluster.py)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.cluster import last_error


def test_last_error_line_is_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "receiver-0.log"
    log.write_text(
        "ts=1 level=ERROR event=x error=ConnectionResetError\n"
        "│ ❱ 103 │   handle.flush()  │\n"
        "sqlalchemy.exc.OperationalError: connection failed\n"
        "OSError: [Errno 28] No space left on device\n"
        "│ /services/cli.py:51 in receiver │\n"
    )
    assert last_error(log) == "OSError: [Errno 28] No space left on device"
    log.write_text("ts=1 level=INFO event=receiver_started\n")
    assert last_error(log) == "no error line"
