"""Wake idle workers when rows are inserted: one NOTIFY per inserting statement.

A statement-level trigger (not per row) calls ``pg_notify('outbox_new', '')``. PostgreSQL
folds identical notifications within a transaction, so a bulk insert or many inserts in one
transaction send one notification at commit, and a rolled-back transaction sends none.
Workers treat a notification only as "claim now"; polling still finds everything. Behind
PgBouncer in transaction mode (no LISTEN), or to spare producers the commit-time NOTIFY,
``ALTER TABLE outbox DISABLE TRIGGER outbox_notify_on_insert``.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0002"
down_revision: str | None = "outbox_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION outbox_notify_on_insert() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_new', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER outbox_notify_on_insert
        AFTER INSERT ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify_on_insert()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify_on_insert ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_notify_on_insert()")
