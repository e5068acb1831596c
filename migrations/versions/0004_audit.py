"""``outbox_audit``: who changed which rows from the dashboard or the CLI, and when.

Each batch of an operator's change (retrying or purging dead rows) inserts one audit row
in the same statement as the change itself, so the record and the change commit (or roll
back) together. The table is new and small: creating it takes no lock on ``outbox``.

Revision ID: outbox_0004
Revises: outbox_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "outbox_0004"
down_revision: str | None = "outbox_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("operation", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("selection", postgresql.JSONB(), nullable=False),
        sa.Column("rows_affected", sa.Integer(), nullable=False),
        sa.CheckConstraint("rows_affected >= 0", name="ck_outbox_audit_rows_nonnegative"),
    )
    op.create_index("ix_outbox_audit_at", "outbox_audit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_audit_at", table_name="outbox_audit")
    op.drop_table("outbox_audit")
