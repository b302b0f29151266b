"""A study analysed with slices missing is reported ``partial``, saying what is missing."""

from __future__ import annotations

from services.core.contracts import MissingSlices
from services.core.db import Database
from services.receiver.completion import Completeness
from services.reporter.fhir import build as fb
from tests.factories.api import finding_spec, make_job, make_study

MISSING = Completeness(
    partial=True,
    reasons=("10 instances refused (out of resources), not resent",),
    missing_z_mm=((-19.0, -10.0),),
)


def _input(db: Database, completeness: Completeness) -> fb.ReportInput:
    with db.session() as session:
        study = make_study(session, accession="ACC-19")
        made = make_job(session, study, findings=[finding_spec(diameter_mm=6.5)])
        made.job.completeness = completeness.to_stored()
    return fb.ReportInput(job=made.job, study=made.study, findings=made.findings)


def test_partial_study_is_a_partial_report_naming_the_missing_range(db: Database) -> None:
    data = _input(db, MISSING)
    body = fb.report_json(data, fb.local_links(data))
    assert body["status"] == "partial"
    assert "Incomplete study: 10 instances refused" in body["conclusion"]
    assert "Not received: z -19.0 to -10.0 mm." in body["conclusion"]


def test_complete_study_stays_final(db: Database) -> None:
    data = _input(db, Completeness())
    body = fb.report_json(data, fb.local_links(data))
    assert body["status"] == "final" and "Incomplete" not in body["conclusion"]
    assert data.job.partial_summary == ""


GAP = MissingSlices(missing_z_mm=((-30.0, -20.0),), slices=9, dropped_findings=1)


def _with_gap(db: Database, completeness: Completeness) -> fb.ReportInput:
    data = _input(db, completeness)
    data.job.details = {**(data.job.details or {}), "missing": GAP.model_dump(mode="json")}
    return data


def test_a_gap_the_analysis_found_makes_the_report_partial_and_names_it(db: Database) -> None:
    data = _with_gap(db, Completeness())  # the receiver did not know
    body = fb.report_json(data, fb.local_links(data))
    assert body["status"] == "partial"
    assert "lacks 9 slices (z -30.0 to -20.0 mm)" in body["conclusion"]
    assert "1 finding at their edge not reported" in body["conclusion"]


def test_a_known_partial_study_names_its_range_once(db: Database) -> None:
    data = _with_gap(db, MISSING)
    conclusion = fb.report_json(data, fb.local_links(data))["conclusion"]
    assert conclusion.count("z -19.0 to -10.0 mm") == 1 and "z -30.0" not in conclusion
    assert "Nothing in or next to the missing slices was analysed" in conclusion
