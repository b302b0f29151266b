"""The completion policies: stability per calling AE, gaps, bounded waits, partial results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.core.settings import Settings, StabilityRule
from services.receiver.completion import (
    Completeness,
    Evidence,
    SeriesSlices,
    StudyClock,
    Waits,
    assess,
    decide,
    rule_for,
    series_gaps,
    stable_reason,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DEFAULT = StabilityRule(stable_age_seconds=10, release_grace_seconds=2)
ORTHANC = StabilityRule(stable_age_seconds=30)  # instance by instance: release means nothing
WAITS = Waits(gap_seconds=60, incomplete_seconds=300, min_lung_coverage_mm=200)


def clock(last_ago: float, released_ago: float | None = None, open_: int = 0) -> StudyClock:
    released = None if released_ago is None else NOW - timedelta(seconds=released_ago)
    return StudyClock(NOW - timedelta(seconds=last_ago), open_, released)


def series(positions: list[float], uid: str = "1.2.3") -> SeriesSlices:
    return SeriesSlices(uid, tuple(positions), tuple(range(1, len(positions) + 1)))


FULL = series([i * 2.5 for i in range(100)])  # 247.5 mm
GAPPED = series([i * 2.5 for i in range(100) if not 40 <= i < 60])


def test_rule_for_takes_the_strictest_sender() -> None:
    rules = {"ORTHANC": ORTHANC}
    assert rule_for(["STORESCU"], rules, DEFAULT) == DEFAULT
    assert rule_for([], rules, DEFAULT) == DEFAULT
    assert rule_for(["ORTHANC "], rules, DEFAULT) == ORTHANC
    both = rule_for(["STORESCU", "ORTHANC"], rules, DEFAULT)
    assert both.stable_age_seconds == 30 and both.release_grace_seconds is None
    # no per-AE rules: the default whoever sent (the tracker then skips the senders query)
    assert rule_for(["STORESCU", "ORTHANC"], {}, DEFAULT) == rule_for([], {}, DEFAULT) == DEFAULT


def test_stable_reason_per_rule() -> None:
    assert stable_reason(clock(3, released_ago=2), DEFAULT, NOW) == "released"
    assert stable_reason(clock(3, released_ago=2), ORTHANC, NOW) is None  # no release rule
    assert stable_reason(clock(29), ORTHANC, NOW) is None
    assert stable_reason(clock(30), ORTHANC, NOW) == "idle"
    naive = StudyClock((NOW - timedelta(seconds=11)).replace(tzinfo=None), 0, None)  # SQLite
    assert stable_reason(naive, DEFAULT, NOW) == "idle"


def test_series_gaps_by_position_and_by_number() -> None:
    assert not series_gaps(FULL).has_gaps
    gaps = series_gaps(GAPPED)
    assert gaps.missing_z_mm == ((100.0, 147.5),) and gaps.missing_slices == 20
    assert gaps.step_mm == 2.5 and gaps.coverage_mm == 247.5
    unordered = series_gaps(SeriesSlices("1.2", tuple(reversed(GAPPED.positions))))
    assert unordered.missing_z_mm == gaps.missing_z_mm  # order of arrival does not matter
    numbers = series_gaps(SeriesSlices("1.2", (), (1, 2, 3, 6, 7)))
    assert numbers.missing_numbers == (4, 5) and numbers.missing_slices == 2


def test_a_complete_study_completes_when_stable() -> None:
    decision = decide(clock(10), DEFAULT, Evidence(series=(FULL,)), NOW, WAITS)
    assert decision is not None and decision.reason == "idle"
    assert not decision.completeness.partial and decision.completeness.summary() == ""
    assert decide(clock(9), DEFAULT, Evidence(series=(FULL,)), NOW, WAITS) is None


def test_a_gap_waits_bounded_then_completes_partial() -> None:
    evidence = Evidence(series=(GAPPED,))
    assert decide(clock(10), DEFAULT, evidence, NOW, WAITS) is None
    assert decide(clock(59), DEFAULT, evidence, NOW, WAITS) is None
    decision = decide(clock(60), DEFAULT, evidence, NOW, WAITS)
    assert decision is not None and decision.reason == "idle-waited"
    done = decision.completeness
    assert done.partial and done.missing_z_mm == ((100.0, 147.5),)
    assert "20 slices missing" in done.summary() and "z 100.0 to 147.5 mm" in done.summary()


def test_known_incomplete_waits_longer_and_names_the_refused_range() -> None:
    tail = series([i * 2.5 for i in range(80)])  # the last 20 slices were refused
    refused = tuple(i * 2.5 for i in range(80, 100))
    evidence = Evidence(series=(tail,), refused=refused)
    assert decide(clock(299), DEFAULT, evidence, NOW, WAITS) is None
    decision = decide(clock(300), DEFAULT, evidence, NOW, WAITS)
    assert decision is not None and decision.completeness.partial
    assert decision.completeness.missing_z_mm == ((200.0, 247.5),)
    assert "20 instances refused" in decision.completeness.summary()


def test_interrupted_transfer_is_partial_until_completed() -> None:
    evidence = Evidence(series=(FULL,), interrupted=True)
    assert decide(clock(100, released_ago=99), DEFAULT, evidence, NOW, WAITS) is None
    decision = decide(clock(300), DEFAULT, evidence, NOW, WAITS)
    assert decision is not None and decision.completeness.partial
    assert "receiver restart" in decision.completeness.summary()


def test_short_slab_waits_like_a_gap_then_is_flagged_not_partial() -> None:
    short = series([i * 2.5 for i in range(40)])  # 97.5 mm: the first half of a paused send
    assert decide(clock(59), DEFAULT, Evidence(series=(short,)), NOW, WAITS) is None
    decision = decide(clock(60), DEFAULT, Evidence(series=(short,)), NOW, WAITS)
    assert decision is not None and not decision.completeness.partial
    assert "Short slab" in decision.completeness.summary()
    assert assess(Evidence(series=(short,)), min_lung_coverage_mm=0).flags == ()


def test_completeness_round_trips_and_parses_old_rows() -> None:
    done = assess(Evidence(series=(GAPPED,), refused=(None,)), min_lung_coverage_mm=0)
    assert Completeness.parse(done.to_stored()) == done
    assert Completeness.parse({}) == Completeness()
    assert Completeness.parse({"status": "partial", "missing_z_mm": "x"}).partial


def test_stability_rules_setting_is_json_by_ae(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "NODULEFLOW_STABILITY_RULES",
        '{"ORTHANC": {"stable_age_seconds": 60}, "MODALITY": '
        '{"stable_age_seconds": 20, "release_grace_seconds": 1}}',
    )
    rules = Settings().stability_rules
    assert rules["ORTHANC"].release_grace_seconds is None
    assert rules["MODALITY"] == StabilityRule(stable_age_seconds=20, release_grace_seconds=1)
    monkeypatch.setenv("NODULEFLOW_STABILITY_RULES", '{"X": {"stable_age": 5}}')
    with pytest.raises(ValueError, match="stable_age"):
        Settings()
