"""retention: studies record when their images were purged; purges journal each purge

``studies.purged_at`` is set when retention deletes a study's images; ``purges`` has one row
per purge, which is also its journal (no ``finished_at``: files may remain, the purge is
resumed). See ``services/core/retention``.

Revision ID: 0010_retention
Revises: 0009_study_completeness
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_retention"
down_revision = "0009_study_completeness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "purges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_version", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("files_removed", sa.Integer(), nullable=False),
        sa.Column("bytes_removed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("purges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_purges_study_id"), ["study_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_purges_finished_at"), ["finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("purges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_purges_finished_at"))
        batch_op.drop_index(batch_op.f("ix_purges_study_id"))
    op.drop_table("purges")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
