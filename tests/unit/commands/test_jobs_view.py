from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.commands.jobs_view import render_jobs


def test_render_jobs_draws_one_row_per_job(capsys: pytest.CaptureFixture[str]) -> None:
    row = {
        "job_id": "0123456789abcdef",
        "study_uid": "1.2.826.0.1.3680043.8.498.12345678901234567890",
        "version": 2,
        "state": "done",
        "reason": "",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "findings": 3,
        "timings": {"load": 1.25, "infer": 4.0, "total": 5.25, "note": "x"},
    }
    render_jobs([row, {**row, "job_id": "fedcba9876543210", "findings": None}])
    out = capsys.readouterr().out
    assert "01234567" in out and "fedcba98" in out
    assert "…" + row["study_uid"][-16:] in out
    assert "load 1.2 infer 4.0" in out and "total" not in out
