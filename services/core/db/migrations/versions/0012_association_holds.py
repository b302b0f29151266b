"""receivers: which receiver process holds each open association count

``association_holds`` splits ``studies.open_associations`` by receiver (replica lease
number) and SCP process, so the counts of a receiver that died can be taken off while
others run; ``receiver_lease_seq`` numbers the leases (PostgreSQL only). See
``services/receiver/holds.py``.

Revision ID: 0012_association_holds
Revises: 0011_finding_review
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_association_holds"
down_revision = "0011_finding_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "association_holds",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("lease", sa.Integer(), nullable=False),
        sa.Column("process", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("study_id", "lease", "process"),
    )
    with op.batch_alter_table("association_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_association_holds_lease"), ["lease"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE IF NOT EXISTS receiver_lease_seq AS integer")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS receiver_lease_seq")
    with op.batch_alter_table("association_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_association_holds_lease"))
    op.drop_table("association_holds")
