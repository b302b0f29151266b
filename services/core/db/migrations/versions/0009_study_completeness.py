"""study_completeness: what the receiver knows of a study's completeness

Instances gain ``slice_position`` (their position along the slice normal, for gap checks),
studies ``interrupted_at`` (a receiver restart cut an association carrying the study), jobs
``completeness`` (complete, or partial with the missing z ranges), and ``refused_instances``
keeps the instances refused with 0xA700 until they are stored.

Revision ID: 0009_study_completeness
Revises: 0008_patient_identity
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_study_completeness"
down_revision = "0008_patient_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slice_position", sa.Float(), nullable=True))
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interrupted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("completeness", sa.JSON(), nullable=False, server_default="{}")
        )
    op.create_table(
        "refused_instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("slice_position", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False, server_default=""),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_refused_instances_study_instance_uid", "refused_instances", ["study_instance_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_refused_instances_study_instance_uid", table_name="refused_instances")
    op.drop_table("refused_instances")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("completeness")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("interrupted_at")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("slice_position")
