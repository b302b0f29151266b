"""patient_identity: Issuer of Patient ID, the identifier system it names, an MRN index

Studies gain ``issuer_of_patient_id`` (0010,0021) and ``patient_id_system`` (the URI that
issuer names, "" for none or a local name) and an index on ``patient_id`` for
``Patient?identifier=`` searches. Existing rows have no issuer, so their ``patient_key``
(FHIR Patient id) is unchanged.

Revision ID: 0008_patient_identity
Revises: 0007_report_versions
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_patient_identity"
down_revision = "0007_report_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "issuer_of_patient_id", sa.String(length=64), nullable=False, server_default=""
            )
        )
        batch_op.add_column(
            sa.Column("patient_id_system", sa.String(length=72), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_studies_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_patient_id"))
        batch_op.drop_column("patient_id_system")
        batch_op.drop_column("issuer_of_patient_id")
