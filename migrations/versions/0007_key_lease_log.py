"""Key leases as a log of rows that are written once: no row a claim reads is ever rewritten.

``outbox_keys`` rewrote a key's row at every lease and every acknowledgement. While a
snapshot is held (``pg_dump``, a long report) none of those versions can be removed, and
every look-up of the key passes through all of them: after ten minutes at 500 messages a
second over 200 keys, a claim spent most of its time there.

* ``outbox_key_leases``: one row per lease of a key, inserted by the claim that takes it:
  ``(key, after_lease)`` is its primary key, ``after_lease`` the lease it follows (0: the
  key's first), ``lease_no`` its number (from ``outbox_seq``), ``floor_seq``/``floor_id``
  where the key's live rows start (as in ``outbox_0006``), ``leased_at`` when.
  A claim reads a key's latest lease with a backward scan of the primary key, which meets
  the newest entries first, and supersedes it (``superseded``, set once: a HOT update)
  in the statement that inserts the next one. A claim whose snapshot saw a lease that was
  superseded since finds it so under the row's lock and leaves the key alone; two claims
  that both saw no lease collide on ``(key, 0)``. Workers delete superseded rows, and a
  key's last row, once their lease is older than ``LOCK_SECONDS``.
* Acknowledgements no longer write any key row: a key is in flight exactly while its first
  live row is ``in_progress``, which the claim reads anyway. ``outbox_keys`` keeps only the
  holds behind dead heads (``held_by``, written when a row goes dead with
  ``ORDERING_DEAD=hold``); its ``inflight``, ``locked_until``, ``lease_no`` and floors are
  no longer written.

Creating a table takes no lock on ``outbox``. Rolling upgrade: ordered workers of the
previous version lease keys in ``outbox_keys`` and workers of this one in
``outbox_key_leases``, and neither sees the other's leases, so **stop every ordered worker
of the previous version before starting one of this version** (unordered workers may roll
as usual). On downgrade, the previous version finds in ``outbox_keys`` only holds (this
version's housekeeping deletes the other rows), and its claim, which checks each key's first
row too, takes no key whose batch is in flight.

Revision ID: outbox_0007
Revises: outbox_0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0007"
down_revision: str | None = "outbox_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASES_STORAGE = (
    "fillfactor = 80, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,"
    " autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000"
)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        f"""
        CREATE TABLE IF NOT EXISTS outbox_key_leases (
            key text NOT NULL,
            after_lease bigint NOT NULL,
            lease_no bigint NOT NULL,
            floor_seq bigint NOT NULL,
            floor_id bigint,
            leased_at timestamptz NOT NULL,
            superseded boolean NOT NULL DEFAULT false,
            PRIMARY KEY (key, after_lease)
        ) WITH ({LEASES_STORAGE})
        """
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("DROP TABLE IF EXISTS outbox_key_leases")
