"""studies: a base spec + search space whose trials are jobs; waiting / stopped_early trials

Revision ID: d4b2e6f7a8c9
Revises: c3a1f2d4e5b6
Create Date: 2026-12-03 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4b2e6f7a8c9"
down_revision: str | None = "c3a1f2d4e5b6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("searches", sa.JSON(), nullable=False),
        sa.Column("objective", sa.JSON(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("early_stopping", sa.JSON(), nullable=True),
        sa.Column("rung_decisions", sa.JSON(), nullable=False),
        sa.Column("trial_count", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_studies_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index("ix_studies_owner_created", "studies", ["owner_id", "created_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("study_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("trial_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("overrides", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_study_id_studies"), "studies", ["study_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index(op.f("ix_jobs_study_id"), ["study_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_study_id"))
        batch.drop_constraint(op.f("fk_jobs_study_id_studies"), type_="foreignkey")
        batch.drop_column("overrides")
        batch.drop_column("trial_index")
        batch.drop_column("study_id")
        batch.drop_column("stop_reason")
    op.drop_index("ix_studies_owner_created", table_name="studies")
    op.drop_table("studies")
