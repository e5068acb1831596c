"""Keep claims fast while vacuum cannot keep up (a held snapshot, lagging autovacuum).

* ``outbox_keys.floor_seq``, ``outbox_keys.floor_id``: where the ordered claim starts
  reading a key's rows in ``ix_outbox_key_order``. Every lease writes them: ``floor_seq``
  the position of the batch's first row (no live positioned row of the key is below it),
  ``floor_id`` past the last unpositioned row the batch took. The claim reads the key from
  there instead of from its first entry, so it never re-reads the entries its delivered
  rows left behind. ``NULL`` (a key leased by an older worker, or never): from the start.
* Autovacuum settings for the two tables that churn: ``outbox`` is vacuumed after 1 % of
  its rows (plus 1,000) are dead rather than PostgreSQL's default 20 %, which on a table
  holding days of published rows means hours of dead entries in the claim indexes;
  ``outbox_keys`` (a few hundred rows, rewritten at every lease and acknowledgement) after
  200 dead rows.

Adding nullable columns without a default and setting storage parameters change only the
catalog: each takes its table's lock for a moment, bounded here by ``lock_timeout`` so that
a ``pg_dump`` holding the table makes the migration fail and retry later rather than queue
every producer behind it. Workers of the previous version keep working beside new ones:
they leave the floors as they are, and a floor that is behind only costs a longer read.

Revision ID: outbox_0006
Revises: outbox_0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "outbox_0006"
down_revision: str | None = "outbox_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTBOX_VACUUM = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,"
    " autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02"
)
KEYS_VACUUM = "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE outbox_keys ADD COLUMN IF NOT EXISTS floor_seq bigint")
    op.execute("ALTER TABLE outbox_keys ADD COLUMN IF NOT EXISTS floor_id bigint")
    op.execute(f"ALTER TABLE outbox_keys SET ({KEYS_VACUUM})")
    op.execute(f"ALTER TABLE outbox SET ({OUTBOX_VACUUM})")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "ALTER TABLE outbox RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
        " autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor)"
    )
    op.execute(
        "ALTER TABLE outbox_keys RESET (autovacuum_vacuum_scale_factor,"
        " autovacuum_vacuum_threshold)"
    )
    op.execute("ALTER TABLE outbox_keys DROP COLUMN IF EXISTS floor_id")
    op.execute("ALTER TABLE outbox_keys DROP COLUMN IF EXISTS floor_seq")
