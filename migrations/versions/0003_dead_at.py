"""``dead_at``: when a row went dead, kept by a trigger, and the dead rows indexed by it.

Operators age dead rows by when they died: ``outbox purge dead --older-than 30d`` must not
delete a message that died an hour ago because it was created (or first delayed) a month
ago, and ``outbox dead list`` shows the latest deaths first.

* ``dead_at`` is set by a ``BEFORE`` row trigger whenever a row becomes ``dead`` (by any
  statement: this library's, an older worker's during a rolling upgrade, or hand-written
  SQL) and cleared when it leaves ``dead``. An explicit value is kept. The triggers' ``WHEN``
  clauses are evaluated without calling the function, so the claim and acknowledgement hot
  path (never a change to or from ``dead``) pays nothing measurable.
* Existing dead rows get the migration's time: when they really died is not recorded
  anywhere (a row given up on keeps the ``next_attempt_at`` of its last claim, which can
  be weeks earlier), so their retention counts from the upgrade and never deletes one
  early. This runs after the column's short lock is released (``lock_timeout`` 10 s
  bounds the wait for it), so it holds only the dead rows.
* ``ix_outbox_dead_at (dead_at, id) WHERE status = 'dead'`` replaces
  ``ix_outbox_dead_created_at``, so listing, retrying (a keyset walk on both columns) and
  purging read only the rows they return, however many died in the same statement. It is
  built ``CONCURRENTLY`` (outside the migration's transaction) before the old index is
  dropped, so producers and workers are not blocked; a run that failed half-way finishes
  when run again. Outside the transaction means committing what ran before it: a host
  application that runs all its revisions in one transaction gets them committed here.
  Where Alembic was handed a connection already inside a transaction (it then cannot
  commit it), the backfill and a plain ``CREATE INDEX`` run in that transaction instead,
  which blocks writes to ``outbox`` while the index builds.

Revision ID: outbox_0003
Revises: outbox_0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from alembic import op

revision: str = "outbox_0003"
down_revision: str | None = "outbox_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STAMP = """
CREATE OR REPLACE FUNCTION outbox_stamp_dead_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'dead' THEN
        NEW.dead_at := coalesce(NEW.dead_at, statement_timestamp());
    ELSE
        NEW.dead_at := NULL;
    END IF;
    RETURN NEW;
END
$$
"""


def _swap_index(drop: str, create: str, columns: str, *, concurrently: bool) -> None:
    """Build ``create``, then drop ``drop`` (both on the dead rows); ``concurrently`` only
    outside a transaction (inside ``autocommit_block``)."""
    how = "CONCURRENTLY " if concurrently else ""
    # A build that failed half-way leaves an invalid index of this name: start over.
    op.execute(f"DROP INDEX {how}IF EXISTS {create}")
    op.execute(f"CREATE INDEX {how}{create} ON outbox ({columns}) WHERE status = 'dead'")
    op.execute(f"DROP INDEX {how}IF EXISTS {drop}")


@contextlib.contextmanager
def _outside_the_transaction() -> Iterator[bool]:
    """Commit and run outside a transaction if Alembic can (yields True), else stay in the
    caller's transaction (yields False): Alembic cannot commit a transaction it was handed
    (``config.attributes["connection"]`` inside ``engine.begin()``)."""
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
    # The column and the triggers need a short exclusive lock: wait for it at most this
    # long rather than queue every producer and worker behind a long transaction.
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_at timestamptz")
    op.execute(_STAMP)
    op.execute("DROP TRIGGER IF EXISTS outbox_dead_at_on_insert ON outbox")
    op.execute(
        """
        CREATE TRIGGER outbox_dead_at_on_insert
        BEFORE INSERT ON outbox
        FOR EACH ROW WHEN (NEW.status = 'dead' OR NEW.dead_at IS NOT NULL)
        EXECUTE FUNCTION outbox_stamp_dead_at()
        """
    )
    op.execute("DROP TRIGGER IF EXISTS outbox_dead_at_on_update ON outbox")
    op.execute(
        """
        CREATE TRIGGER outbox_dead_at_on_update
        BEFORE UPDATE OF status, dead_at ON outbox
        FOR EACH ROW WHEN (
            (NEW.status = 'dead') IS DISTINCT FROM (OLD.status = 'dead')
            OR NEW.dead_at IS DISTINCT FROM OLD.dead_at
        )
        EXECUTE FUNCTION outbox_stamp_dead_at()
        """
    )
    with _outside_the_transaction() as outside:  # committed: the locks above are released
        op.execute("UPDATE outbox SET dead_at = now() WHERE status = 'dead' AND dead_at IS NULL")
        _swap_index(
            "ix_outbox_dead_created_at", "ix_outbox_dead_at", "dead_at, id", concurrently=outside
        )


def downgrade() -> None:
    with _outside_the_transaction() as outside:
        _swap_index(
            "ix_outbox_dead_at", "ix_outbox_dead_created_at", "created_at", concurrently=outside
        )
    op.execute("SET LOCAL lock_timeout = '10s'")
    op.execute("DROP TRIGGER IF EXISTS outbox_dead_at_on_update ON outbox")
    op.execute("DROP TRIGGER IF EXISTS outbox_dead_at_on_insert ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_stamp_dead_at()")
    op.execute("ALTER TABLE outbox DROP COLUMN IF EXISTS dead_at")
