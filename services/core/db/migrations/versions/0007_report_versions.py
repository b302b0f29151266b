"""report_versions: a study's analyses are versions of one FHIR DiagnosticReport

Jobs gain ``report_id`` (the DiagnosticReport id: the study's first finished job),
``report_version`` (its ``meta.versionId``) and ``superseded_at`` (when a later analysis
replaced it). Finished jobs are backfilled in version order, so a study that already had an
amended report keeps one current report whose history holds the earlier one.

Revision ID: 0007_report_versions
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_report_versions"
down_revision = "0006"
branch_labels = None
depends_on = None

# Finished jobs numbered in version order within their study (plain SQL, no parameters).
_BACKFILL = """
UPDATE jobs SET
  report_id = (SELECT j2.id FROM jobs j2
               WHERE j2.study_id = jobs.study_id AND j2.state = 'done'
               ORDER BY j2.version LIMIT 1),
  report_version = (SELECT count(*) FROM jobs j2
                    WHERE j2.study_id = jobs.study_id AND j2.state = 'done'
                      AND j2.version <= jobs.version),
  superseded_at = (SELECT j2.finished_at FROM jobs j2
                   WHERE j2.study_id = jobs.study_id AND j2.state = 'done'
                     AND j2.version > jobs.version
                   ORDER BY j2.version LIMIT 1)
WHERE state = 'done'
"""


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("report_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_report_id"), ["report_id"], unique=False)
        batch_op.create_unique_constraint("uq_jobs_report_version", ["report_id", "report_version"])
    op.execute(_BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_report_version", type_="unique")
        batch_op.drop_index(batch_op.f("ix_jobs_report_id"))
        batch_op.drop_column("superseded_at")
        batch_op.drop_column("report_version")
        batch_op.drop_column("report_id")
