"""The ``outbox`` table as SQLAlchemy Core metadata.

This module is the single definition of the table; the Alembic migrations create exactly
this, and a test checks that autogenerate finds no difference.

Index plan (each keeps one hot query an index scan at any table size):

* ``ix_outbox_claimable``: ``(next_attempt_at, id) WHERE status = 'pending'`` -- the
  unfiltered claim walks it in order and stops after ``limit`` rows.
* ``ix_outbox_claimable_type``: ``(type, next_attempt_at, id) WHERE status = 'pending'`` --
  a claim filtered by type prefixes becomes range scans on ``type`` (the column uses the
  ``"C"`` collation, so a prefix is exactly a byte range), so one domain's claim never walks
  another domain's backlog.
* ``ix_outbox_lease``: ``(locked_until) WHERE status = 'in_progress'`` -- reaping.
* ``ix_outbox_published_at``: ``(published_at) WHERE status = 'published'`` -- retention.
* ``ix_outbox_dead_at``: ``(dead_at, id) WHERE status = 'dead'`` -- listing, retrying and
  purging dead rows by when they died (keyset walks on both columns).
* ``uq_outbox_dedupe_key``: unique ``(dedupe_key) WHERE dedupe_key IS NOT NULL``.
* ``ix_outbox_key_order``: ``(key, seq, id) WHERE status IN ('pending', 'in_progress') AND
  key IS NOT NULL`` -- a key's live rows in delivery order (positioned rows first, by
  ``seq``; then the rest by ``id``), read by the ordered claim one key at a time.

Beyond DESIGN.md's columns, ``lease_token`` (uuid) names one claim: a fresh random value is
set at every claim and cleared when the lease ends, and every acknowledgement is fenced on
it. ``(id, attempts)`` alone is not unique per claim, because ``release`` hands the attempt
back. ``dead_at`` says when a row went dead: a trigger (migration ``outbox_0003``) sets it
whenever ``status`` becomes ``dead``, by whatever statement, and clears it when the row
leaves ``dead``, so it is never stale and no statement has to remember it.

Per-key order (migration ``outbox_0005``, ``docs/ordering.md``): ``seq`` is a message's
position, taken from the sequence ``outbox_seq`` by the ordered claim the first time the row
is claimed and kept for every redelivery; ``outbox_key_leases`` records each lease of a key
(migration ``outbox_0007``), and ``outbox_keys`` the keys held behind a dead head.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Sequence,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

__all__ = [
    "AUDIT_TABLE_NAME",
    "KEYS_TABLE_NAME",
    "LEASES_TABLE_NAME",
    "OUTBOX_TABLE_NAME",
    "POSITION_SEQUENCE",
    "Status",
    "audit_table",
    "keys_table",
    "leases_table",
    "metadata",
    "outbox_table",
]

OUTBOX_TABLE_NAME = "outbox"


class Status(StrEnum):
    """Lifecycle of an outbox row.

    ``pending`` -> ``in_progress`` (claimed, leased) -> ``published`` | back to ``pending``
    (retry, release, reaped lease) | ``dead`` (gave up; ``error`` says why).
    """

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    PUBLISHED = "published"
    DEAD = "dead"


_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in Status)

metadata = MetaData()

outbox_table = Table(
    OUTBOX_TABLE_NAME,
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("type", Text(collation="C"), nullable=False),
    Column("key", Text, nullable=True),
    Column("payload", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("locked_by", Text, nullable=True),
    Column("lease_token", UUID(as_uuid=True), nullable=True),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    # Set and cleared by the trigger of migration outbox_0003 (status becomes / leaves dead).
    Column("dead_at", DateTime(timezone=True), nullable=True),
    Column("dedupe_key", Text, nullable=True),
    # The message's position in its key's delivery order (migration outbox_0005).
    Column("seq", BigInteger, nullable=True),
    CheckConstraint(f"status IN ({_STATUS_VALUES})", name="ck_outbox_status"),
    CheckConstraint("attempts >= 0", name="ck_outbox_attempts_nonnegative"),
    # Vacuumed after 1 % of its rows are dead, not 20 % (migration outbox_0006).
    postgresql_with={
        "autovacuum_vacuum_scale_factor": 0.01,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_vacuum_insert_scale_factor": 0.01,
        "autovacuum_analyze_scale_factor": 0.02,
    },
)

_pending = text("status = 'pending'")

Index(
    "ix_outbox_claimable",
    outbox_table.c.next_attempt_at,
    outbox_table.c.id,
    postgresql_where=_pending,
)
Index(
    "ix_outbox_claimable_type",
    outbox_table.c.type,
    outbox_table.c.next_attempt_at,
    outbox_table.c.id,
    postgresql_where=_pending,
)
Index(
    "ix_outbox_lease",
    outbox_table.c.locked_until,
    postgresql_where=text("status = 'in_progress'"),
)
Index(
    "ix_outbox_published_at",
    outbox_table.c.published_at,
    postgresql_where=text("status = 'published'"),
)
Index(
    "ix_outbox_dead_at",
    outbox_table.c.dead_at,
    outbox_table.c.id,
    postgresql_where=text("status = 'dead'"),
)
Index(
    "uq_outbox_dedupe_key",
    outbox_table.c.dedupe_key,
    unique=True,
    postgresql_where=text("dedupe_key IS NOT NULL"),
)
Index(
    "ix_outbox_key_order",
    outbox_table.c.key,
    outbox_table.c.seq,
    outbox_table.c.id,
    postgresql_where=text("status IN ('pending', 'in_progress') AND key IS NOT NULL"),
)

# -- per-key order (migration outbox_0005) ------------------------------------------------------

KEYS_TABLE_NAME = "outbox_keys"

POSITION_SEQUENCE = Sequence("outbox_seq", metadata=metadata)
"""Positions (``outbox.seq``): one value per message, taken in delivery order of its key."""

keys_table = Table(
    KEYS_TABLE_NAME,
    metadata,
    Column("key", Text, primary_key=True),
    # inflight, locked_until, lease_no and the floors were the key's lease before migration
    # outbox_0007 (leases now live in outbox_key_leases): no longer written; housekeeping
    # deletes the rows older workers left.
    Column("inflight", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    # The dead head this key waits behind (ORDERING_DEAD=hold), until it is retried or purged.
    Column("held_by", BigInteger, nullable=True),
    Column("lease_no", BigInteger, nullable=True),
    Column("floor_seq", BigInteger, nullable=True),
    Column("floor_id", BigInteger, nullable=True),
    CheckConstraint("inflight >= 0", name="ck_outbox_keys_inflight_nonnegative"),
    postgresql_with={
        "fillfactor": 70,
        "autovacuum_vacuum_scale_factor": 0,
        "autovacuum_vacuum_threshold": 200,
    },
)
"""Keys held behind a dead head (``ORDERING_DEAD=hold``): one row per held key, written when
its head goes dead, released by triggers when that row is retried or purged."""

LEASES_TABLE_NAME = "outbox_key_leases"

leases_table = Table(
    LEASES_TABLE_NAME,
    metadata,
    Column("key", Text, primary_key=True),
    # The lease this one follows (0: the key's first): two claims that saw the same lease
    # collide here, so at most one of them follows it.
    Column("after_lease", BigInteger, primary_key=True),
    # Drawn from outbox_seq before the batch's new positions.
    Column("lease_no", BigInteger, nullable=False),
    # Where the ordered claim starts reading the key: no live positioned row is below
    # floor_seq, and the unpositioned rows below floor_id committed after this lease (NULL:
    # from the key's first entry).
    Column("floor_seq", BigInteger, nullable=False),
    Column("floor_id", BigInteger, nullable=True),
    Column("leased_at", DateTime(timezone=True), nullable=False),
    # Set once, by the claim that inserts the next lease: a claim that saw this lease as the
    # latest and finds it superseded under the row lock leaves the key alone.
    Column("superseded", Boolean, nullable=False, server_default=text("false")),
    postgresql_with={
        "fillfactor": 80,
        "autovacuum_vacuum_scale_factor": 0,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_vacuum_insert_scale_factor": 0,
        "autovacuum_vacuum_insert_threshold": 10000,
    },
)
"""Key leases, as rows written once (migration ``outbox_0007``): a key's latest lease is its
row with the largest ``after_lease``, found by a backward scan of the primary key that meets
the newest entries first, so the look-up costs the same however many superseded or deleted
leases a held snapshot keeps. A key is in flight while its first live row is
``in_progress``: acknowledgements write nothing here. Housekeeping deletes leases older than
``LOCK_SECONDS``."""

# -- the operators' audit trail (migration outbox_0004) ----------------------------------------

AUDIT_TABLE_NAME = "outbox_audit"

audit_table = Table(
    AUDIT_TABLE_NAME,
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # The statement's time: every batch of one operation is stamped when it ran.
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    # One call (all its batches) shares an operation id.
    Column("operation", UUID(as_uuid=True), nullable=False),
    Column("selection", JSONB, nullable=False),
    Column("rows_affected", Integer, nullable=False),
    CheckConstraint("rows_affected >= 0", name="ck_outbox_audit_rows_nonnegative"),
)
"""One row per batch of an operator's change (retry or purge of dead rows), written by the
statement that makes the change, so a change and its record commit or roll back together."""

Index("ix_outbox_audit_at", audit_table.c.at)
