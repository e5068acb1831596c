"""Per-key order: positions, key leases and the index the ordered claim reads a key by.

* ``outbox.seq`` (bigint, nullable): a message's position in its key's delivery order,
  taken from the sequence ``outbox_seq`` the first time an ordered worker claims it and kept
  for every redelivery. Existing rows have none; they are positioned when first claimed.
* ``outbox_keys``: one row per key whose batch is in flight (``inflight`` rows not yet
  acknowledged) or that waits behind a dead head (``held_by``). A row with ``inflight = 0``
  and no hold is a free key (workers delete such rows when idle). Only workers write it:
  producers never touch it, so an open producer transaction holds no key back. It has no
  index besides its primary key and leaves room on its pages (``fillfactor`` 70), so that
  leasing and freeing a key are HOT updates. ``lease_no`` changes at every lease.
* Triggers keep order across operator commands: a dead row that is retried loses its
  position (it is positioned again, after what its key delivered meanwhile) unless its key
  is held behind it (then nothing after it was delivered, and it keeps its place), and a
  dead head that holds its key releases it when it is retried or purged.
* ``ix_outbox_key_order (key, seq, id) WHERE status IN ('pending', 'in_progress') AND key
  IS NOT NULL``, built ``CONCURRENTLY`` outside the migration's transaction (as in
  ``outbox_0003``), so producers and workers are not blocked while it builds.

Workers of an older version keep working during a rolling upgrade, but they ignore key
order; turn ordering on once every worker runs this version (docs/ordering.md).

Revision ID: outbox_0005
Revises: outbox_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from alembic import op

revision: str = "outbox_0005"
down_revision: str | None = "outbox_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FORGET_POSITION = """
CREATE OR REPLACE FUNCTION outbox_forget_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The dead head a key is held behind keeps its place: nothing after it was delivered.
    IF NOT EXISTS (SELECT 1 FROM outbox_keys WHERE key = NEW.key AND held_by = NEW.id) THEN
        NEW.seq := NULL;
    END IF;
    RETURN NEW;
END
$$
"""

_RELEASE_HELD_KEY = """
CREATE OR REPLACE FUNCTION outbox_release_held_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox_keys SET held_by = NULL WHERE key = OLD.key AND held_by = OLD.id;
    RETURN NULL;
END
$$
"""


@contextlib.contextmanager
def _outside_the_transaction() -> Iterator[bool]:
    """Commit and run outside a transaction if Alembic can (yields True), else stay in the
    caller's transaction (yields False), as in ``outbox_0003``."""
    context = op.get_context()
    handed_a_transaction = (
        not context.as_sql
        and context.connection is not None
        and context.connection.in_transaction()
        and getattr(context, "_transaction", None) is None  # not one Alembic began
    )
    if not handed_a_transaction:
        with context.autocommit_block():
            yield True
    else:
        yield False


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("ALTER TABLE outbox ADD COLUMN IF NOT EXISTS seq bigint")
    op.execute("CREATE SEQUENCE IF NOT EXISTS outbox_seq")
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS outbox_keys (
            key text PRIMARY KEY,
            inflight integer NOT NULL DEFAULT 0,
            locked_until timestamptz,
            held_by bigint,
            lease_no bigint,
            CONSTRAINT ck_outbox_keys_inflight_nonnegative CHECK (inflight >= 0)
        ) WITH (fillfactor = 70)
        """
    )
    op.execute(_FORGET_POSITION)
    op.execute("DROP TRIGGER IF EXISTS outbox_forget_position_on_retry ON outbox")
    op.execute(
        """
        CREATE TRIGGER outbox_forget_position_on_retry
        BEFORE UPDATE OF status ON outbox
        FOR EACH ROW WHEN (OLD.status = 'dead' AND NEW.status <> 'dead' AND NEW.seq IS NOT NULL)
        EXECUTE FUNCTION outbox_forget_position()
        """
    )
    op.execute(_RELEASE_HELD_KEY)
    op.execute("DROP TRIGGER IF EXISTS outbox_release_held_key_on_retry ON outbox")
    op.execute(
        """
        CREATE TRIGGER outbox_release_held_key_on_retry
        AFTER UPDATE OF status ON outbox
        FOR EACH ROW WHEN (OLD.status = 'dead' AND NEW.status <> 'dead' AND OLD.key IS NOT NULL)
        EXECUTE FUNCTION outbox_release_held_key()
        """
    )
    op.execute("DROP TRIGGER IF EXISTS outbox_release_held_key_on_purge ON outbox")
    op.execute(
        """
        CREATE TRIGGER outbox_release_held_key_on_purge
        AFTER DELETE ON outbox
        FOR EACH ROW WHEN (OLD.status = 'dead' AND OLD.key IS NOT NULL)
        EXECUTE FUNCTION outbox_release_held_key()
        """
    )
    with _outside_the_transaction() as outside:
        how = "CONCURRENTLY " if outside else ""
        # A build that failed half-way leaves an invalid index of this name: start over.
        op.execute(f"DROP INDEX {how}IF EXISTS ix_outbox_key_order")
        op.execute(
            f"CREATE INDEX {how}ix_outbox_key_order ON outbox (key, seq, id)"
            " WHERE status IN ('pending', 'in_progress') AND key IS NOT NULL"
        )


def downgrade() -> None:
    with _outside_the_transaction() as outside:
        how = "CONCURRENTLY " if outside else ""
        op.execute(f"DROP INDEX {how}IF EXISTS ix_outbox_key_order")
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP TRIGGER IF EXISTS outbox_release_held_key_on_purge ON outbox")
    op.execute("DROP TRIGGER IF EXISTS outbox_release_held_key_on_retry ON outbox")
    op.execute("DROP TRIGGER IF EXISTS outbox_forget_position_on_retry ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_release_held_key()")
    op.execute("DROP FUNCTION IF EXISTS outbox_forget_position()")
    op.execute("DROP TABLE IF EXISTS outbox_keys")
    op.execute("DROP SEQUENCE IF EXISTS outbox_seq")
    op.execute("ALTER TABLE outbox DROP COLUMN IF EXISTS seq")
