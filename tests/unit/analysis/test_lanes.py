from __future__ import annotations

import threading

import pytest

from services.analysis.lanes import Lanes


def _in_thread(target) -> None:
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    if failure:
        raise failure[0]


def test_alone_a_thread_runs_on_the_whole_session() -> None:
    lanes = Lanes(2)
    assert lanes.current() is None
    with lanes.held() as lane:
        assert lane == 0 and lanes.in_use == 1
        assert lanes.current() is None  # one analysis: every core is its
    assert lanes.in_use == 0


def test_side_by_side_each_thread_has_its_own_lane() -> None:
    lanes = Lanes(2)
    holding, done = threading.Event(), threading.Event()
    seen: dict[str, int | None] = {}

    def other() -> None:
        with lanes.held() as lane:
            holding.set()
            done.wait(10)
            seen["other"] = lane

    thread = threading.Thread(target=other)
    thread.start()
    assert holding.wait(10)
    with lanes.held() as lane:
        seen["mine"] = lanes.current()
        assert lane == seen["mine"]
    done.set()
    thread.join(10)
    assert {seen["mine"], seen["other"]} == {0, 1}
    assert lanes.in_use == 0


def test_a_lane_comes_back_when_its_analysis_fails_and_the_rest_run_without() -> None:
    lanes = Lanes(1)
    with pytest.raises(RuntimeError), lanes.held():
        raise RuntimeError("analysis failed")
    assert lanes.in_use == 0
    with lanes.held() as lane:
        assert lane == 0

        def second() -> None:
            with lanes.held() as extra:
                assert extra is None  # every lane taken: the whole session
                assert lanes.in_use == 1 and lanes.current() is None

        _in_thread(second)


def test_a_nested_hold_keeps_the_outer_lane() -> None:
    lanes = Lanes(2)
    with lanes.held() as outer:
        with lanes.held() as inner:
            assert inner == outer == 0 and lanes.in_use == 1
        assert lanes.in_use == 1  # the inner block gave nothing back
    assert lanes.in_use == 0


def test_no_lanes_and_a_bad_count() -> None:
    lanes = Lanes(0)
    with lanes.held() as lane:
        assert lane is None and lanes.current() is None
    with pytest.raises(ValueError):
        Lanes(-1)
