from __future__ import annotations

import os

import pytest

from services.receiver.fast.balance import LoadBoard, shared_table


def test_board_is_shared_between_mappings() -> None:
    fd = shared_table(3)
    try:
        first, second = LoadBoard(fd, 3, 0), LoadBoard(fd, 3, 1)
        first.set(2)
        second.set(1)
        assert second.get(0) == 2
        assert first.fewest_elsewhere() == 0  # slot 2 holds nothing yet
        first.close()
        second.close()
    finally:
        os.close(fd)


def test_busier_process_defers_until_a_sibling_catches_up() -> None:
    fd = shared_table(2)
    try:
        busy, idle = LoadBoard(fd, 2, 0), LoadBoard(fd, 2, 1)
        busy.set(1)
        assert busy.should_defer() and not idle.should_defer()
        assert busy.defer(limit=0.01) >= 0.01  # the sibling never took it: bounded wait
        idle.set(1)
        assert not busy.should_defer()
        assert busy.defer() == 0.0
        busy.close()
        idle.close()
    finally:
        os.close(fd)


def test_single_process_never_defers() -> None:
    fd = shared_table(1)
    try:
        board = LoadBoard(fd, 1, 0)
        board.set(5)
        assert board.fewest_elsewhere() is None
        assert not board.should_defer()
        board.close()
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        LoadBoard(fd, 1, 1)
