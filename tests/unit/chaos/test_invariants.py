"""The chaos suite's pure checks and table (tests/chaos/invariants.py, report.py, traffic.py)."""

from __future__ import annotations

from tests.chaos.invariants import Check, JobRow, current_report, doubled, leaks, versions_note
from tests.chaos.report import Injected, render
from tests.chaos.schedule import Fault, Kind
from tests.chaos.traffic import Study, patient_for, tag_for


def _job(
    version: int, state: str, count: int, reason: str = "", uid: str = "1.2", current: bool = False
) -> JobRow:
    return JobRow(uid, version, state, reason, count, current)


def test_a_second_job_over_the_same_instances_is_doubled() -> None:
    assert doubled([_job(1, "done", 40), _job(2, "done", 48)]) == []
    assert doubled([_job(1, "done", 48), _job(2, "queued", 48)]) == [
        "1.2: jobs over [48, 48] instances"
    ]
    assert doubled([_job(1, "done", 48), _job(1, "done", 48, uid="1.3")]) == []


def test_current_report_needs_the_newest_job_final_and_covering_everything() -> None:
    assert current_report([_job(1, "done", 40), _job(2, "done", 48, current=True)], 48) is None
    assert current_report([_job(1, "done", 48, current=True), _job(2, "inferring", 48)], 48) == (
        "newest job v2 still inferring"
    )
    assert current_report([_job(1, "done", 40, current=True)], 48) == (
        "report covers 40 of 48 acknowledged instances"
    )
    assert current_report([_job(1, "done", 40, current=True), _job(2, "done", 48)], 48) == (
        "newest job v2 is done but not the current report"
    )
    two = [_job(1, "done", 40, current=True), _job(2, "done", 48, current=True)]
    assert current_report(two, 48) == "2 current reports (versions [1, 2])"
    assert current_report([_job(1, "failed", 48, "transient: database")], 48) is None
    assert current_report([_job(1, "skipped", 48, " ")], 48) == "skipped without a reason"
    assert current_report([], 48) == "no job"
    assert current_report([], 0) is None  # nothing acknowledged, nothing owed


def test_leaks_name_the_log_and_the_needle() -> None:
    logs = {"a.log": "event=stored sop=1.2.3", "b.log": "warning: 'DOEQZAAA JOHN'"}
    assert leaks(logs, ["QZAAA", "", "QZBAA"]) == ["b.log: 'QZAAA'"]


def test_patient_tags_are_unique_upper_case_and_in_every_identifier() -> None:
    tags = {tag_for(i) for i in range(26**3)}
    assert len(tags) == 26**3
    assert all(t.isupper() and t.startswith("QZ") for t in tags)
    patient = patient_for(3)
    assert all(
        patient.tag in text for text in (patient.name, patient.patient_id, patient.referring)
    )
    assert patient.needles == (patient.tag, patient.name)


def test_table_counts_faults_by_kind_and_shows_broken_invariants() -> None:
    injected = [
        Injected(Fault(1.0, Kind.KILL_WORKER, 0, 1.0), "SIGKILL"),
        Injected(Fault(2.0, Kind.KILL_WORKER, 1, 1.0), "SIGKILL"),
        Injected(Fault(3.0, Kind.CUT_DATABASE, 0, 2.0), "3 links"),
    ]
    checks = [
        Check("no doubled job", True, "0 doubled"),
        Check("no delivery lost", False, "1/2", ("sr 1.2.3: pending",)),
    ]
    table = render(seed=9, header="h", injected=injected, checks=checks)
    lines = table.splitlines()
    assert lines[0] == "chaos seed=9: h"
    assert any(line.split() == ["kill", "worker", "2"] for line in lines)
    assert any(line.split() == ["total", "3"] for line in lines)
    assert any(line.startswith("no delivery lost") and " NO " in line for line in lines)
    assert "  no delivery lost: sr 1.2.3: pending" in lines


def test_versions_note_counts_studies_with_new_versions_by_how_they_were_sent() -> None:
    studies = [
        Study(i, patient_for(i), f"1.{i}", [], {}, attempts=a, split=sp)
        for i, (a, sp) in enumerate([(1, True), (1, True), (3, False), (1, False)])
    ]
    jobs = [_job(1, "done", 24, uid="1.0"), _job(2, "done", 48, uid="1.0")]
    jobs += [_job(1, "done", 48, uid=f"1.{i}") for i in (1, 2, 3)]
    assert versions_note(jobs, studies) == (
        "studies with more than one job: 1 of 2 split across both receivers, "
        "0 of 1 sent whole, retried, 0 of 1 sent whole, at once"
    )
