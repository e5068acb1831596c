"""Dead rows indexed by ``(created_at, id)``, so ``outbox dead retry`` walks them in order.

The retry walks dead rows on a keyset cursor over ``(created_at, id)``. Rows inserted by one
transaction share ``created_at`` (the transaction's timestamp); with ``created_at`` alone
in the index, every batch had to read and sort a whole group of equal timestamps to find
its next rows, so a large batch that died together cost a sort of the whole group per
batch. With ``id`` in the index each batch reads only its own rows.

The new index is built ``CONCURRENTLY`` (outside the migration's transaction) before the
old one is dropped, so producers and workers are never blocked; on a database that fails
half-way, running the migration again finishes it.

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0003"
down_revision: str | None = "outbox_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replace(drop: str, create: str, columns: str) -> None:
    with op.get_context().autocommit_block():
        # A build that failed half-way leaves an invalid index of this name: start over.
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {create}")
        op.execute(
            f"CREATE INDEX CONCURRENTLY {create} ON outbox ({columns}) WHERE status = 'dead'"
        )
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {drop}")


def upgrade() -> None:
    _replace("ix_outbox_dead_created_at", "ix_outbox_dead_created_at_id", "created_at, id")


def downgrade() -> None:
    _replace("ix_outbox_dead_created_at_id", "ix_outbox_dead_created_at", "created_at")
