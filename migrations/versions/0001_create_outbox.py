"""Create the outbox table and its indexes.

Revision ID: outbox_0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "outbox_0001"
down_revision: str | None = None
# A branch of its own, so a host application can merge it into its history.
branch_labels: str | Sequence[str] | None = ("outbox",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("type", sa.Text(collation="C"), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("locked_by", sa.Text(), nullable=True),
        sa.Column("lease_token", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'in_progress', 'published', 'dead')", name="ck_outbox_status"
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_outbox_attempts_nonnegative"),
    )
    pending = sa.text("status = 'pending'")
    op.create_index(
        "ix_outbox_claimable", "outbox", ["next_attempt_at", "id"], postgresql_where=pending
    )
    op.create_index(
        "ix_outbox_claimable_type",
        "outbox",
        ["type", "next_attempt_at", "id"],
        postgresql_where=pending,
    )
    op.create_index(
        "ix_outbox_lease",
        "outbox",
        ["locked_until"],
        postgresql_where=sa.text("status = 'in_progress'"),
    )
    op.create_index(
        "ix_outbox_published_at",
        "outbox",
        ["published_at"],
        postgresql_where=sa.text("status = 'published'"),
    )
    op.create_index(
        "ix_outbox_dead_created_at",
        "outbox",
        ["created_at"],
        postgresql_where=sa.text("status = 'dead'"),
    )
    op.create_index(
        "uq_outbox_dedupe_key",
        "outbox",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("outbox")
