"""uploaded_checkpoints: checkpoint files users upload to start jobs from (init_from.upload)

Revision ID: c3a1f2d4e5b6
Revises: baf448230669
Create Date: 2026-12-02 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3a1f2d4e5b6"
down_revision: str | None = "baf448230669"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploaded_checkpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_uploaded_checkpoints_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploaded_checkpoints")),
    )
    op.create_index(
        op.f("ix_uploaded_checkpoints_owner_id"), "uploaded_checkpoints", ["owner_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_uploaded_checkpoints_owner_id"), table_name="uploaded_checkpoints")
    op.drop_table("uploaded_checkpoints")
