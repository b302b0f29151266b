"""worklist review: each finding's key slice (number, SOP instance); radiologists' reviews

``findings.slice_number`` and ``findings.sop_instance_uid`` locate a finding's key slice in
the analysed series (null for rows written before); ``finding_reviews`` keeps every accept
or reject of a finding with who and when (docs/fhir.md, "Radiologist review").

Revision ID: 0011_finding_review
Revises: 0010_retention
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_finding_review"
down_revision = "0010_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slice_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sop_instance_uid", sa.String(length=64), nullable=True))
    op.create_table(
        "finding_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("finding_reviews", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_finding_reviews_finding_id"), ["finding_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_finding_reviews_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("finding_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finding_reviews_job_id"))
        batch_op.drop_index(batch_op.f("ix_finding_reviews_finding_id"))
    op.drop_table("finding_reviews")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_column("sop_instance_uid")
        batch_op.drop_column("slice_number")
