"""``noduleflow purge``: what retention would delete (``--dry-run``) or deletes now."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from services.core.db import Database
from services.core.retention.loop import make_purger, policy_from_settings
from services.core.retention.policy import Plan
from services.core.retention.purge import Purged
from services.core.settings import Settings


def _age(age: timedelta) -> str:
    days = age.total_seconds() / 86400
    return f"{days:.1f} d" if days >= 1 else f"{age.total_seconds() / 3600:.1f} h"


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "study_uid": c.study.study_instance_uid,
            "age_days": round(c.age.total_seconds() / 86400, 3),
            "bytes": c.bytes,
            "instances": c.study.instances,
            "reason": c.reason.value,
        }
        for c in plan.choices
    ]


def summary(plan: Plan) -> dict[str, Any]:
    return {
        "used_bytes": plan.used,
        "high_water_bytes": plan.high_water,
        "target_bytes": plan.target,
        "projected_bytes": plan.projected,
        "kept": {reason.value: n for reason, n in sorted(plan.kept.items())},
    }


def dry_run(settings: Settings) -> tuple[Plan, list[dict[str, Any]]]:
    """The plan, read-only: nothing is deleted and no row is written."""
    db = Database(settings.database_url)
    try:
        plan = make_purger(settings, db).plan(policy_from_settings(settings))
    finally:
        db.dispose()
    return plan, plan_rows(plan)


def purge_now(settings: Settings) -> list[Purged]:
    """Resume unfinished purges and purge what the policy chooses, once."""
    db = Database(settings.database_url)
    try:
        return make_purger(settings, db).run_once(policy_from_settings(settings))
    finally:
        db.dispose()


def render_plan(plan: Plan, rows: list[dict[str, Any]]) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("study", "age", "bytes", "instances", "reason", title="would purge (dry run)")
    for row in rows:
        table.add_row(
            row["study_uid"],
            _age(timedelta(days=row["age_days"])),
            f"{row['bytes']:,}",
            str(row["instances"]),
            row["reason"],
        )
    console.print(table)
    info = summary(plan)
    kept = ", ".join(f"{k} {v}" for k, v in info["kept"].items()) or "none"
    console.print(
        f"{len(rows)} studies, {sum(r['bytes'] for r in rows):,} bytes; used {plan.used:,} "
        f"bytes, high-water {plan.high_water if plan.high_water is not None else '-'}, "
        f"target {plan.target if plan.target is not None else '-'}; kept (never purged "
        f"now): {kept}"
    )


def render_purged(done: list[Purged]) -> None:
    table = Table("study", "reason", "instances", "bytes", "files removed", title="purged")
    for p in done:
        table.add_row(
            p.study_instance_uid, p.reason, str(p.instances), f"{p.bytes:,}", str(p.files_removed)
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
