"""finding_contract: findings carry finding_type (nodule | mass) and solid_diameter_mm

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("solid_diameter_mm", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "finding_type", sa.String(length=8), nullable=False, server_default="nodule"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_column("finding_type")
        batch_op.drop_column("solid_diameter_mm")
