"""Per-key order in SQL: the ordered claim, and the key leases every acknowledgement frees.

The contract (docs/ordering.md):

* **Positions.** A keyed row gets its position ``seq`` from the sequence ``outbox_seq`` the
  first time an ordered claim takes it, in its key's order, and keeps it for every
  redelivery. A key's order is: rows that have a position, by ``seq``; then the others by
  ``id`` (``ix_outbox_key_order``, where ``NULL`` sorts last). Rows are positioned only
  once committed and seen, so a transaction that commits late takes its place after what
  its key has delivered, and an open transaction holds nothing back.
* **One batch per key in flight.** A claim leases a key by writing its row in
  ``outbox_keys`` (``inflight`` = the rows it claimed); every statement that ends one of
  those rows' leases (published, dead, retried, released, reaped) counts them back down in
  the same statement, and the key is free at 0. Claimers never wait for one another: a
  key another claimer is leasing right now is skipped (a transaction-scoped advisory lock
  on the key, tried without waiting), and a key whose row shows a lease is skipped.
* **A key's batch is a prefix of its order.** The claim reads the key's live rows in order
  and takes them while each is pending, due and of a wanted type; it stops at the first
  that is not (a retry waiting for its time holds its key back). The rows are re-read
  under their row locks, so a decision made on the statement's snapshot is checked
  against the latest versions: a row that changed since stops the batch there. And a key
  is leased only if its ``lease_no`` is the one the snapshot saw: a lease that came and
  went while the statement ran may have positioned rows this snapshot cannot see.

* **Floors.** Each lease also records where the key's live rows start (``floor_seq``: its
  batch's first position; ``floor_id``: past the unpositioned rows it took), and claims read
  the key from there, so they never pass the index entries of rows delivered before, which
  stay until vacuum removes them (for as long as a snapshot older than them is held).

All of it is one statement per claim and per acknowledgement; its cost per claimed row
depends on neither a key's backlog nor the number of keys, and, but for the versions of
the keys' lease rows, not on what was delivered since the last vacuum.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CompoundSelect,
    Integer,
    Interval,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.sql.dml import Update

from outbox.storage import statements as sql
from outbox.storage.schema import KEYS_TABLE_NAME, POSITION_SEQUENCE, keys_table, outbox_table

__all__ = [
    "DELETE_IDLE_KEYS",
    "EXTEND_LEASE",
    "KEY_COUNTS",
    "MARK_DEAD",
    "MARK_PUBLISHED",
    "REAP",
    "RELEASE",
    "RESCHEDULE",
    "TIDY_KEYS",
    "ordered_claim",
]

col = outbox_table.c
keys = keys_table.c

KEY_LOCK_CLASS = zlib.crc32(KEYS_TABLE_NAME.encode()) & 0x7FFFFFFF
"""The first half of the advisory lock a claim tries on a key it is about to lease (the
second is ``hashtext(key)``): claimers skip a key another claimer holds right now."""


def _limit() -> Any:
    return bindparam("limit", type_=Integer)


@lru_cache(maxsize=2)
def ordered_claim(filtered: bool) -> CompoundSelect[Any]:
    """The ordered claim, as one statement (the parameters of
    :func:`outbox.storage.statements.claim`, with ``:walk`` and, filtered, ``:pool``).

    1. ``pool``: the oldest claimable rows (:func:`~outbox.storage.statements.claimable_pool`);
    2. rows without a key are claimed as the unordered claim does (locked, skipping rows
       other claimers hold);
    3. the keys of the others without a lease or a hold, oldest first, up to ``:limit``,
       and of those the keys whose first row can go now; with fewer than ``:limit`` of
       them but more of their rows in sight than ``:limit`` (a few keys with backlogs),
       half (at least one), so that the other workers get the rest; of those, the keys no
       other claimer is leasing right now;
    4. per key, its live rows in order, read from the key's floors (:func:`_in_key_order`
       on ``ix_outbox_key_order``, at most as many as the key has in the pool), locked, and
       kept while each is pending, due and wanted;
    5. ``:limit`` of all, round by round (each key's first row, oldest key first, with the
       rows without a key; then each key's second row...); the keys' leases written
       (``ON CONFLICT``: a key leased meanwhile is not taken), positions given in each
       key's order, the rows leased.

    Returns :func:`~outbox.storage.statements.with_frontier` rows.
    """
    pool = sql.claimable_pool(filtered=filtered)
    wanted = (sql.in_type_ranges(),) if filtered else ()
    claimable = (*sql.claimable_row(), *wanted)

    keyed = (
        select(
            pool.c.key,
            func.min(pool.c.next_attempt_at).label("since"),
            func.min(pool.c.id).label("first_id"),
            func.count().label("seen"),
        )
        .where(pool.c.key.isnot(None))
        .group_by(pool.c.key)
        .subquery("keyed")
    )
    # One probe of the key's lease row: whether it is free, its lease number, its floors.
    lease = _lease_row(keyed.c.key)
    floor_seq = func.coalesce(lease.c.floor_seq, 0)
    # The unpositioned rows from the floor, or from the key's first row in the pool if that
    # is older (a row that committed after the last lease).
    floor_id = func.least(func.coalesce(lease.c.floor_id, 0), keyed.c.first_id)
    pool_keys = (
        select(
            keyed,
            _head_can_go(keyed.c.key, floor_seq, floor_id, claimable).label("ready"),
            lease.c.lease_no.label("lease_seen"),
            floor_seq.label("floor_seq"),
            floor_id.label("floor_id"),
        )
        .select_from(keyed.outerjoin(lease, true()))
        .where(func.coalesce(lease.c.inflight, 0) == 0, lease.c.held_by.is_(None))
        .order_by(keyed.c.since, keyed.c.first_id)
        .limit(_limit())
        .cte("pool_keys")
        .prefix_with("MATERIALIZED")
    )
    # The rescue: when nothing in the pool can be taken (each key in it is leased, held, or
    # waits for its head's retry: the pool is one busy key's backlog, or such keys), keys
    # found by a scan of ix_outbox_key_order, so that other keys are not held up behind them.
    # An empty pool has nothing to rescue: every key whose head can go has that head in the
    # pool (the walk saw no claimable row), and the scan would read the whole key index
    # (every entry of every key, dead ones too while a snapshot holds them back).
    stuck = and_(
        select(literal(1)).select_from(pool).exists(),
        ~select(literal(1)).where(pool_keys.c.ready).exists(),
        ~select(literal(1)).where(pool.c.key.is_(None)).exists(),
    )
    scanned = _key_scan(stuck)
    # Only keys that can go now count towards the :limit the scan stops at, so the scan
    # reads past blocked keys (up to its bound) instead of stopping at them.
    rescue_lease = _lease_row(scanned.c.key)
    floored = (
        select(
            scanned.c.key,
            func.coalesce(rescue_lease.c.floor_seq, 0).label("floor_seq"),
            func.coalesce(rescue_lease.c.floor_id, 0).label("floor_id"),
            rescue_lease.c.lease_no,
        )
        .select_from(scanned.outerjoin(rescue_lease, true()))
        .where(func.coalesce(rescue_lease.c.inflight, 0) == 0, rescue_lease.c.held_by.is_(None))
        .subquery("floored")
    )
    rescued_keys = (
        select(floored)
        .where(
            floored.c.key.isnot(None),
            _head_can_go(floored.c.key, floored.c.floor_seq, floored.c.floor_id, claimable),
        )
        .limit(_limit())
        .subquery("rescued_keys")
    )
    # A rescued key's rows are not in sight: read a fair share of the batch from each.
    share = func.greatest(1, _limit() / func.count().over())
    rescued = select(
        rescued_keys.c.key,
        sql.CLOCK.label("since"),
        literal(0, BigInteger).label("first_id"),
        share.label("seen"),
        true().label("ready"),
        rescued_keys.c.lease_no.label("lease_seen"),
        rescued_keys.c.floor_seq,
        rescued_keys.c.floor_id,
    ).subquery("rescued")
    key_candidates = union_all(select(pool_keys), select(rescued)).subquery("key_candidates")
    ready = (
        select(
            key_candidates.c.key,
            key_candidates.c.since,
            key_candidates.c.first_id,
            key_candidates.c.seen,
            key_candidates.c.lease_seen,
            key_candidates.c.floor_seq,
            key_candidates.c.floor_id,
            func.row_number()
            .over(order_by=(key_candidates.c.since, key_candidates.c.first_id))
            .label("rank"),
            func.count().over().label("count"),
            func.sum(key_candidates.c.seen).over().label("in_sight"),
        )
        .where(key_candidates.c.ready)
        .subquery("ready")
    )
    # With fewer keys ready than :limit but more of their rows in sight than :limit (a few
    # keys with backlogs), half of the keys (at least one): the other workers get the other
    # half, so a few keys still run in parallel. Else every ready key, up to :limit. Of
    # those, the keys no other claimer is leasing at this moment.
    wanted_now = and_(
        ready.c.rank <= _limit(),
        or_(
            ready.c.count >= _limit(),
            ready.c.in_sight <= _limit(),
            ready.c.rank <= func.greatest(1, (ready.c.count + 1) / 2),
        ),
    )
    grabbed = (
        select(
            ready.c.key,
            ready.c.since,
            ready.c.first_id,
            ready.c.seen,
            ready.c.lease_seen,
            ready.c.floor_seq,
            ready.c.floor_id,
        )
        .where(
            # CASE: the lock is tried only for the keys chosen, never before the choice.
            case(
                (
                    wanted_now,
                    func.pg_try_advisory_xact_lock(KEY_LOCK_CLASS, func.hashtext(ready.c.key)),
                ),
                else_=false(),
            )
        )
        .cte("grabbed")
        .prefix_with("MATERIALIZED")
    )
    live = _in_key_order(
        grabbed.c.key, grabbed.c.floor_seq, grabbed.c.floor_id, func.least(grabbed.c.seen, _limit())
    ).lateral("live")
    heads = (
        select(grabbed.c.key, grabbed.c.since, grabbed.c.first_id, live.c.id, live.c.seq)
        .select_from(grabbed.join(live, true()))
        .cte("heads")
        .prefix_with("MATERIALIZED")
    )
    # The latest versions, under row locks: a row that changed since the snapshot and is no
    # longer claimable drops out here, and its key's batch stops before it.
    locked = (
        select(col.id)
        .where(col.id == func.any(func.array(select(heads.c.id).scalar_subquery())), *claimable)
        .with_for_update(skip_locked=True)
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    key_order = (heads.c.seq, heads.c.id)
    still_claimable = heads.c.id == func.any(func.array(select(locked.c.id).scalar_subquery()))
    ranked = select(
        heads.c.id,
        heads.c.key,
        heads.c.since,
        heads.c.first_id,
        heads.c.seq,
        func.row_number().over(partition_by=heads.c.key, order_by=key_order).label("ord"),
        func.bool_and(still_claimable)
        .over(partition_by=heads.c.key, order_by=key_order)
        .label("unbroken"),
    ).subquery("ranked")
    loose = select(
        pool.c.id,
        null().label("key"),
        pool.c.next_attempt_at.label("since"),
        pool.c.id.label("first_id"),
        null().label("seq"),
        literal(1).label("ord"),
    ).where(pool.c.key.is_(None))
    prefixes = select(
        ranked.c.id, ranked.c.key, ranked.c.since, ranked.c.first_id, ranked.c.seq, ranked.c.ord
    ).where(ranked.c.unbroken)
    candidates = union_all(loose, prefixes).subquery("candidates")
    picked = (
        select(candidates)
        # Round by round (each key's first row, then each key's second...): fair across
        # keys, and a key's rows are taken only after the rows before them in its order.
        .order_by(candidates.c.ord, candidates.c.since, candidates.c.first_id)
        .limit(_limit())
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    loose_locked = (
        select(col.id)
        .where(
            col.id
            == func.any(
                func.array(select(picked.c.id).where(picked.c.key.is_(None)).scalar_subquery())
            ),
            *claimable,
        )
        .with_for_update(skip_locked=True)
        .cte("loose_locked")
        .prefix_with("MATERIALIZED")
    )
    lease_until = sql.CLOCK + bindparam("lease", type_=Interval())
    # One lease number per key (drawn once: the CTE is materialized), and the key's floors
    # for the claims after this one: no live positioned row of the key is below this batch's
    # first (its position, or if it has none, every position it is given is above the lease
    # number, drawn first from the same sequence), and the unpositioned rows this batch takes
    # are the first ones from the old floor.
    numbered = (
        select(
            picked.c.key,
            func.count().label("rows"),
            POSITION_SEQUENCE.next_value().label("lease_no"),
            func.min(picked.c.seq).label("first_seq"),
            func.max(picked.c.id).filter(picked.c.seq.is_(None)).label("last_new_id"),
        )
        .where(picked.c.key.isnot(None))
        .group_by(picked.c.key)
        .order_by(picked.c.key)
        .cte("numbered")
        .prefix_with("MATERIALIZED")
    )
    new_leases = select(
        numbered.c.key,
        numbered.c.rows,
        lease_until,
        numbered.c.lease_no,
        func.coalesce(numbered.c.first_seq, numbered.c.lease_no),
        numbered.c.last_new_id + 1,
    ).order_by(numbered.c.key)
    upsert = insert(keys_table).from_select(
        ["key", "inflight", "locked_until", "lease_no", "floor_seq", "floor_id"], new_leases
    )
    # literal_column: "excluded" must stay the proposed row, not become a FROM of its own.
    proposed_key = literal_column("excluded.key", Text)
    lease_seen = select(grabbed.c.lease_seen).where(grabbed.c.key == proposed_key).scalar_subquery()
    leases = (
        upsert.on_conflict_do_update(
            index_elements=[keys.key],
            set_={
                "inflight": upsert.excluded.inflight,
                "locked_until": upsert.excluded.locked_until,
                "lease_no": upsert.excluded.lease_no,
                "floor_seq": upsert.excluded.floor_seq,
                "floor_id": func.coalesce(upsert.excluded.floor_id, keys.floor_id),
            },
            # Free now, and not leased since this statement's snapshot: a lease that came
            # and went meanwhile may have positioned rows this snapshot cannot see.
            where=and_(
                keys.inflight == 0,
                keys.held_by.is_(None),
                keys.lease_no.is_not_distinct_from(lease_seen),
            ),
        )
        .returning(keys.key)
        .cte("leases")
    )
    # Positions in each key's order: nextval() runs in the order of this ordered subquery.
    granted = (
        select(picked.c.id, picked.c.seq)
        # One array of the leased keys, read once (as "IN (subquery)" the planner may make it
        # a nested loop over the leases per row).
        .where(picked.c.key == func.any(func.array(select(leases.c.key).scalar_subquery())))
        .order_by(picked.c.key, picked.c.ord)
        .subquery("granted")
    )
    positioned = select(
        granted.c.id, func.coalesce(granted.c.seq, POSITION_SEQUENCE.next_value()).label("pos")
    ).subquery("positioned")
    taken = union_all(
        select(positioned.c.id, positioned.c.pos),
        select(loose_locked.c.id, null()),
    ).subquery("taken")
    assigned = select(
        func.array_agg(taken.c.id).label("ids"), func.array_agg(taken.c.pos).label("positions")
    ).cte("assigned")
    # Cast: "= ANY(subquery)" would compare with each row; this is one array value.
    ids = cast(select(assigned.c.ids).scalar_subquery(), ARRAY(BigInteger))
    positions = select(assigned.c.positions).scalar_subquery()
    claimed = (
        update(outbox_table)
        # The rows are ours: locked above and found claimable under the lock. The status is
        # checked once more, as sql.claimable_row() does (by primary key, never by a walk).
        .where(col.id == func.any(ids), sql.claimable_row()[0])
        .values(
            status=sql.IN_PROGRESS,
            attempts=col.attempts + 1,
            locked_by=bindparam("worker_id", type_=Text),
            locked_until=lease_until,
            lease_token=func.gen_random_uuid(),
            seq=func.coalesce(col.seq, positions[func.array_position(ids, col.id)]),
        )
        .returning(*sql.CLAIMED_COLUMNS)
    )
    return sql.with_frontier(claimed, pool.c.next_attempt_at)


def _in_key_order(key: Any, floor_seq: Any, floor_id: Any, limit: Any, *extra: Any) -> Any:
    """``key``'s first ``limit`` live rows ``(id, seq, *extra)`` in its order, read from its
    floors: the positioned rows from ``floor_seq``, then the others from ``floor_id`` (two
    ranges of ``ix_outbox_key_order``, merged). Starting there, the read never passes the
    entries of the key's delivered rows, which stay in the index until vacuum removes them
    (for as long as a snapshot older than them is held)."""
    live = col.status.in_([sql.PENDING, sql.IN_PROGRESS])
    columns = (col.id, col.seq, *extra)
    # correlate_except: ``key`` and the floors come from the enclosing query, however deep.
    # Each range read in index order and cut at ``limit`` by itself, so neither is ever
    # read whole (a key's backlog), whatever the planner makes of the union.
    positioned = (
        select(*columns)
        .where(col.key == key, col.seq >= floor_seq, live)
        .order_by(col.seq, col.id)
        .limit(limit)
        .correlate_except(outbox_table)
    )
    unpositioned = (
        select(*columns)
        .where(col.key == key, col.seq.is_(None), col.id >= floor_id, live)
        .order_by(col.seq, col.id)
        .limit(limit)
        .correlate_except(outbox_table)
    )
    rows = union_all(positioned, unpositioned).subquery("in_key_order")
    return select(rows).order_by(rows.c.seq, rows.c.id).limit(limit)


def _head_can_go(key: Any, floor_seq: Any, floor_id: Any, claimable: tuple[Any, ...]) -> Any:
    """Whether ``key``'s first live row (from its floors) is claimable now, on the snapshot:
    a key whose head waits for a retry has nothing to give."""
    head = _in_key_order(key, floor_seq, floor_id, 1, and_(*claimable).label("can_go")).subquery(
        "head"
    )
    return func.coalesce(select(head.c.can_go).scalar_subquery(), false())


def _lease_row(key: Any) -> Any:
    """``key``'s lease row as the snapshot sees it, as a LATERAL subquery (no row: none).

    Every lease and acknowledgement rewrites the row, and while a snapshot is held none of
    its old versions can be removed. A probe per key keeps the cost to that key's versions:
    a bitmap probe reads each of the key's table pages once; an index walk of the range
    ``[key, key]`` in descending order is a backward scan of the primary key (whose entries
    of one key follow their place in the table), so it meets the latest version, the
    visible one, first. (Joining the table whole read every version of every key.)
    """
    return (
        select(keys.lease_no, keys.inflight, keys.held_by, keys.floor_seq, keys.floor_id)
        .where(keys.key >= key, keys.key <= key)
        .order_by(keys.key.desc())
        .limit(1)
        .lateral("lease")
    )


def _next_key(after: Any) -> Any:
    """The smallest key above ``after`` with a row pending or in flight: one probe of
    ``ix_outbox_key_order`` (``NULL``: none)."""
    return (
        select(func.min(col.key))
        .where(col.key > after, col.status.in_([sql.PENDING, sql.IN_PROGRESS]))
        .scalar_subquery()
    )


def _key_scan(when: Any) -> Any:
    """Distinct keys with live rows, in key order from ``:after_key`` and wrapping around to
    the start once (a loose index scan: one probe per key, at most ``10 x :walk``), when
    ``when`` holds; rows ``(key, wrapped)``. A worker passes the largest key of its previous
    batch as ``:after_key``, so that successive scans take turns over the keys."""
    start = bindparam("after_key", type_=Text)
    lowest = literal("", Text)
    anchor = (
        select(
            func.coalesce(_next_key(start), _next_key(lowest)).label("key"),
            _next_key(start).is_(None).label("wrapped"),
            literal(1).label("step"),
        )
        .where(when)
        .cte("key_scan", recursive=True)
    )
    following = _next_key(anchor.c.key)
    step = select(
        func.coalesce(following, case((~anchor.c.wrapped, _next_key(lowest)))),
        or_(anchor.c.wrapped, following.is_(None)),
        anchor.c.step + 1,
    ).where(
        anchor.c.key.isnot(None),
        # At most 10 x :walk probes; the scan stops earlier, as soon as the claim has the
        # :limit free keys it takes from it (a recursive CTE is read on demand).
        anchor.c.step < 10 * bindparam("walk", type_=Integer),
        ~and_(anchor.c.wrapped, anchor.c.key >= start),
    )
    scan = anchor.union_all(step)
    # After wrapping, a key at or past the start was seen already.
    return select(scan.c.key).where(~and_(scan.c.wrapped, scan.c.key >= start)).subquery("scanned")


# -- ending leases: every statement that ends a row's lease counts its key back down ---------


def releasing_keys(ends_leases: Update, *returned: str) -> Select[Any]:
    """``ends_leases`` (returning :data:`~outbox.storage.statements.CHANGED_COLUMNS`) with
    its keys' leases counted down in the same statement; returns the ``returned`` columns.

    Only positioned rows count (an ordered claim leased their key). ``:hold_dead`` (default
    false): a key whose row went ``dead`` here stays held behind it (``held_by``) until that
    row is retried or purged (triggers of migration ``outbox_0005``). The count is an
    ``UPDATE`` of the key's row, so concurrent acknowledgements of one key's rows serialize
    on it and never lose a decrement.
    """
    changed = ends_leases.cte("changed")
    hold = bindparam("hold_dead", value=False, type_=Boolean)
    per_key = (
        select(
            changed.c.key,
            func.count().label("ended"),
            # The first in the key's order of the rows that went dead here.
            type_coerce(
                func.array_agg(aggregate_order_by(changed.c.id, changed.c.seq)).filter(
                    and_(changed.c.status == sql.DEAD, hold)
                ),
                ARRAY(BigInteger),
            )[1].label("dead_head"),
        )
        .where(changed.c.key.isnot(None), changed.c.seq.isnot(None))
        .group_by(changed.c.key)
        .cte("per_key")
    )
    counted_down = (
        update(keys_table)
        .where(keys.key == per_key.c.key)
        .values(
            inflight=func.greatest(keys.inflight - per_key.c.ended, 0),
            held_by=func.coalesce(keys.held_by, per_key.c.dead_head),
        )
        .returning(keys.key)
        .cte("counted_down")
    )
    return select(*(changed.c[name] for name in returned)).add_cte(counted_down)


MARK_PUBLISHED = releasing_keys(sql.MARK_PUBLISHED, "id")
MARK_DEAD = releasing_keys(sql.MARK_DEAD, "id")
RESCHEDULE = releasing_keys(sql.RESCHEDULE, "id", "status")
RELEASE = releasing_keys(sql.RELEASE, "id")
REAP = releasing_keys(sql.REAP, "id", "status")
EXTEND_LEASE = sql.EXTEND_LEASE  # a heartbeat keeps the key's lease as it is


def _keys_leased_before_idle(*conditions: Any) -> Any:
    """Up to ``:limit`` keys meeting ``conditions``, leased before ``now - :idle``, oldest
    lease first (a scan of ``outbox_keys``, which holds only recently used keys)."""
    return func.array(
        select(keys.key)
        .where(keys.locked_until < sql.CLOCK - bindparam("idle", type_=Interval()), *conditions)
        .order_by(keys.locked_until)
        .limit(_limit())
        .scalar_subquery()
    )


_still_in_flight = (
    select(literal(1)).where(col.key == keys.key, col.status == sql.IN_PROGRESS).exists()
)
TIDY_KEYS = (
    update(keys_table)
    .where(
        keys.key == func.any(_keys_leased_before_idle(keys.inflight > 0)),
        keys.inflight > 0,
        ~_still_in_flight,
    )
    .values(inflight=0)
    .returning(keys.key)
)
"""Repair: of up to ``:limit`` keys still counted in flight and leased before ``now -
:idle``, those whose rows are no longer in flight (a row changed by hand) are freed."""

_free = (keys.inflight == 0, keys.held_by.is_(None))
DELETE_IDLE_KEYS = (
    keys_table.delete()
    .where(keys.key == func.any(_keys_leased_before_idle(*_free)), *_free)
    .returning(keys.key)
)
"""Up to ``:limit`` free keys last leased before ``now - :idle`` are deleted (a key's row
holds no position; the next claim writes it again)."""

KEY_COUNTS: Select[int, int] = select(
    func.count().filter(keys.inflight > 0),
    func.count().filter(keys.held_by.isnot(None)),
).select_from(keys_table)
"""``(keys with a batch in flight, keys held behind a dead head)``."""
