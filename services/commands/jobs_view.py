"""``noduleflow jobs``: the job listing read from the database and drawn as a table."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from services.core.db import Database
from services.core.job_listing import query_jobs
from services.core.settings import Settings


def job_rows(settings: Settings, *, study_uid: str | None, limit: int) -> list[dict[str, Any]]:
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return query_jobs(session, study_uid=study_uid, limit=limit)
    finally:
        db.dispose()


def render_jobs(rows: list[dict[str, Any]]) -> None:
    table = Table("job", "study", "v", "state", "findings", "seconds by stage", "reason")
    for row in rows:
        numbers = {k: v for k, v in (row["timings"] or {}).items() if isinstance(v, int | float)}
        timings = " ".join(f"{k} {v:.1f}" for k, v in numbers.items() if k != "total")
        table.add_row(
            row["job_id"][:8],
            "…" + row["study_uid"][-16:],
            str(row["version"]),
            row["state"],
            "" if row["findings"] is None else str(row["findings"]),
            timings,
            row["reason"][:60],
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
