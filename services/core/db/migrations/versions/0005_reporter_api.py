"""reporter_api: FHIR search columns and indexes

Revision ID: 0005
Revises: 0004
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _key(patient_id: str) -> str:
    # Same function as services.core.db.models.patient_key (copied: migrations stay frozen).
    return hashlib.sha256(f"noduleflow:patient:{patient_id}".encode()).hexdigest()[:32]


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("patient_key", sa.String(length=32), nullable=False, server_default="")
        )
    bind = op.get_bind()
    studies = sa.table(
        "studies", sa.column("id", sa.Integer), sa.column("patient_id", sa.String),
        sa.column("patient_key", sa.String),
    )
    for row in bind.execute(sa.select(studies.c.id, studies.c.patient_id)).all():
        bind.execute(
            studies.update()
            .where(studies.c.id == row.id)
            .values(patient_key=_key(row.patient_id or ""))
        )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_patient_key"), ["patient_key"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_studies_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_studies_study_date"), ["study_date"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_state_finished", ["state", "finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_finished")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_study_date"))
        batch_op.drop_index(batch_op.f("ix_studies_accession_number"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_key"))
        batch_op.drop_column("patient_key")
