"""Migration 0007 numbers the finished jobs that existed before it: one report per study, its
versions in job order, the replaced ones superseded when the next one finished."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command

from services.core.db import Database
from services.core.db.session import alembic_config

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _row(table: sa.Table, **values: Any) -> dict[str, Any]:
    """``values`` plus a neutral value for every other NOT NULL column without a default."""
    filler = {sa.String: "", sa.Text: "", sa.Integer: 0, sa.Float: 0.0, sa.JSON: {}}
    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        if column.primary_key and isinstance(column.type, sa.Integer):
            continue
        kind = next((v for t, v in filler.items() if isinstance(column.type, t)), None)
        row[column.name] = T0 if isinstance(column.type, sa.DateTime) else kind
    return row


def test_backfill_numbers_existing_reports(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0006")
    db = Database(database_url)
    meta = sa.MetaData()
    with db.engine.begin() as conn:
        studies = sa.Table("studies", meta, autoload_with=conn)
        jobs = sa.Table("jobs", meta, autoload_with=conn)
        for sid, uid in ((1, "1.2.3.1"), (2, "1.2.3.2")):
            conn.execute(studies.insert().values(_row(studies, id=sid, study_instance_uid=uid)))
        rows = [  # study 1: v1 done, v2 failed, v3 done; study 2: one done, one queued
            ("a1", 1, 1, "done", T0),
            ("a2", 1, 2, "failed", T0 + timedelta(hours=1)),
            ("a3", 1, 3, "done", T0 + timedelta(hours=2)),
            ("b1", 2, 1, "done", T0 + timedelta(hours=3)),
            ("b2", 2, 2, "queued", None),
        ]
        for jid, sid, version, state, finished in rows:
            values = dict(id=jid, study_id=sid, version=version, state=state, finished_at=finished)
            conn.execute(jobs.insert().values(_row(jobs, **values)))
    db.upgrade()
    with db.engine.connect() as conn:
        got = {
            r.id: (r.report_id, r.report_version, r.superseded_at)
            for r in conn.execute(
                sa.text("SELECT id, report_id, report_version, superseded_at FROM jobs")
            )
        }
    db.dispose()

    def at(value: Any) -> Any:  # SQLite returns text, PostgreSQL an aware datetime
        return datetime.fromisoformat(str(value)).astimezone(UTC) if value else None

    assert {k: (v[0], v[1], at(v[2])) for k, v in got.items()} == {
        "a1": ("a1", 1, T0 + timedelta(hours=2)),
        "a2": (None, None, None),
        "a3": ("a1", 2, None),
        "b1": ("b1", 1, None),
        "b2": (None, None, None),
    }
