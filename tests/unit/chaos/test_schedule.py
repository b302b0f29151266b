"""The chaos suite's seeded schedule (tests/chaos/schedule.py)."""

from __future__ import annotations

import itertools

import pytest

from tests.chaos.schedule import Kind, make_schedule


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    assert make_schedule(1717, 24, 150) == make_schedule(1717, 24, 150)
    assert make_schedule(1717, 24, 150) != make_schedule(1718, 24, 150)


def test_every_kind_appears_and_faults_are_in_order_within_the_span() -> None:
    faults = make_schedule(5, 24, 150, workers=2, receivers=2)
    assert len(faults) == 24
    assert {f.kind for f in faults} == set(Kind)
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    assert all(0 <= f.at < 150 for f in faults)
    assert all(f.target in (0, 1) for f in faults)


def test_outages_of_one_resource_never_overlap() -> None:
    for seed in range(50):
        faults = make_schedule(seed, 20, 60)
        for kind in (Kind.CUT_BROKER, Kind.CUT_DATABASE, Kind.FILL_DISK):
            spans = [(f.at, f.at + f.duration) for f in faults if f.kind is kind]
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start + 1e-6, (seed, kind, spans)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one fault"):
        make_schedule(1, 0, 10)
