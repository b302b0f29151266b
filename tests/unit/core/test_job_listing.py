from __future__ import annotations

from services.core.db import Job, Study
from services.core.job_listing import query_jobs


def test_query_jobs_lists_newest_first_with_counts(db) -> None:
    with db.session() as session:
        study = Study(study_instance_uid="1.2.3")
        session.add(study)
        session.flush()
        session.add(
            Job(study_id=study.id, version=1, state="done", details={"sop_uids": ["1", "2"]})
        )
        session.add(Job(study_id=study.id, version=2, state="failed", reason="corrupt-pixel-data"))
    with db.session() as session:
        rows = query_jobs(session, study_uid="1.2.3")
        assert [r["version"] for r in rows] == [2, 1]
        assert rows[0]["reason"] == "corrupt-pixel-data"
        assert rows[1]["details"]["sop_uids"] == 2
        assert query_jobs(session, study_uid="9.9") == []
