"""Per-key order in SQL: the ordered claim, its key leases, and the holds behind dead rows.

The contract (docs/ordering.md):

* **Positions.** A keyed row gets its position ``seq`` from the sequence ``outbox_seq`` the
  first time an ordered claim takes it, in its key's order, and keeps it for every
  redelivery. A key's order is: rows that have a position, by ``seq``; then the others by
  ``id`` (``ix_outbox_key_order``, where ``NULL`` sorts last). Rows are positioned only
  once committed and seen, so a transaction that commits late takes its place after what
  its key has delivered, and an open transaction holds nothing back.
* **One batch per key in flight.** A key is in flight while its first live row is
  ``in_progress`` (a batch is a prefix of the key's order, so its rows come first), and a
  claim takes only keys whose first row can go. Acknowledgements write no key row. The
  snapshot a claim decides on is guarded by the key's lease log (``outbox_key_leases``,
  rows written once): the claim supersedes the latest lease it saw and inserts the next
  one, so a lease written since its snapshot (whose rows it may not see) makes it leave the
  key alone. Claimers never wait for one another: a key another claimer is leasing right
  now is skipped (a transaction-scoped advisory lock on the key, tried without waiting).
* **A key's batch is a prefix of its order.** The claim reads the key's live rows in order
  and takes them while each is pending, due and of a wanted type; it stops at the first
  that is not (a retry waiting for its time holds its key back). The rows are re-read
  under their row locks, so a decision made on the statement's snapshot is checked
  against the latest versions: a row that changed since stops the batch there.
* **Floors.** Each lease also records where the key's live rows start (``floor_seq``: its
  batch's first position; ``floor_id``: past the unpositioned rows it took), and claims read
  the key from there, so they never pass the index entries of rows delivered before, which
  stay until vacuum removes them (for as long as a snapshot older than them is held).

All of it is one statement per claim and per acknowledgement; its cost per claimed row
depends on neither a key's backlog, nor the number of keys, nor what was delivered or leased
since the last vacuum: no row a claim looks up is ever rewritten more than once.
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
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.sql.dml import Update

from outbox.storage import statements as sql
from outbox.storage.schema import (
    KEYS_TABLE_NAME,
    POSITION_SEQUENCE,
    keys_table,
    leases_table,
    outbox_table,
)

__all__ = [
    "DELETE_FREE_KEYS",
    "EXTEND_LEASE",
    "KEY_COUNTS",
    "MARK_DEAD",
    "MARK_PUBLISHED",
    "PRUNE_LEASES",
    "REAP",
    "RELEASE",
    "RESCHEDULE",
    "ordered_claim",
]

col = outbox_table.c
keys = keys_table.c
leases = leases_table.c

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
    3. the keys of the others not held behind a dead row, oldest first, up to ``:limit``,
       and of those the keys whose first row can go now (not in flight, due, wanted); with
       fewer than ``:limit`` of them but more of their rows in sight than ``:limit`` (a few
       keys with backlogs), half (at least one), so that the other workers get the rest; of
       those, the keys no other claimer is leasing right now;
    4. per key, its live rows in order, read from the key's floors (:func:`_in_key_order`
       on ``ix_outbox_key_order``, at most as many as the key has in the pool), locked, and
       kept while each is pending, due and wanted;
    5. ``:limit`` of all, round by round (each key's first row, oldest key first, with the
       rows without a key; then each key's second row...); each key's lease written (the
       latest lease the snapshot saw superseded and the next one inserted: a key leased
       since the snapshot is not taken), positions given in each key's order, the rows
       leased.

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
    # One probe of the key's latest lease: its number and its floors.
    lease = _latest_lease(keyed.c.key)
    floor_seq = func.coalesce(lease.c.floor_seq, 0)
    # The unpositioned rows from the floor, or from the key's first row in the pool if that
    # is older (a row that committed after the last lease).
    floor_id = func.least(func.coalesce(lease.c.floor_id, 0), keyed.c.first_id)
    in_age_order = (
        select(
            keyed,
            lease.c.lease_no.label("lease_seen"),
            lease.c.after_lease.label("after_seen"),
            floor_seq.label("floor_seq"),
            floor_id.label("floor_id"),
        )
        .select_from(keyed.outerjoin(lease, true()))
        .order_by(keyed.c.since, keyed.c.first_id)
        # A fence (no condition is pushed below an OFFSET): the probes below run on the
        # sorted keys one by one, only until :limit of them can go.
        .offset(0)
        .subquery("in_age_order")
    )
    # Only the keys that can go now: a key in flight (the other workers' batches) or
    # waiting for its head's retry takes no place among the :limit.
    pool_keys = (
        select(  # the columns of ``rescued`` below, in its order: the two make one union
            in_age_order.c.key,
            in_age_order.c.since,
            in_age_order.c.first_id,
            in_age_order.c.seen,
            true().label("ready"),
            in_age_order.c.lease_seen,
            in_age_order.c.after_seen,
            in_age_order.c.floor_seq,
            in_age_order.c.floor_id,
        )
        .where(
            ~_held(in_age_order.c.key),
            _head_can_go(
                in_age_order.c.key, in_age_order.c.floor_seq, in_age_order.c.floor_id, claimable
            ),
        )
        .limit(_limit())
        .cte("pool_keys")
        .prefix_with("MATERIALIZED")
    )
    # The rescue: when nothing in the pool can be taken (each key in it is in flight, held,
    # or waits for its head's retry: the pool is one busy key's backlog, or such keys) and
    # the walk was cut at its bound, keys found by a scan of ix_outbox_key_order, so that
    # keys behind them are not held up. A pool the walk did not fill holds every claimable
    # row in view, so every key whose head can go has that head in it: there is nothing to
    # rescue, and the scan would read through every key's index entries, dead ones too
    # while a snapshot holds them back (the usual case at a steady rate: the pool holds a
    # few rows, of keys the other workers have in flight).
    walk_bound = _limit() if filtered else bindparam("walk", type_=Integer)
    stuck = and_(
        select(func.count()).select_from(pool).scalar_subquery() >= walk_bound,
        ~select(literal(1)).select_from(pool_keys).exists(),
        ~select(literal(1)).where(pool.c.key.is_(None)).exists(),
    )
    scanned = _key_scan(stuck)
    # Only keys that can go now count towards the :limit the scan stops at, so the scan
    # reads past blocked keys (up to its bound) instead of stopping at them.
    rescue_lease = _latest_lease(scanned.c.key)
    floored = (
        select(
            scanned.c.key,
            func.coalesce(rescue_lease.c.floor_seq, 0).label("floor_seq"),
            func.coalesce(rescue_lease.c.floor_id, 0).label("floor_id"),
            rescue_lease.c.lease_no,
            rescue_lease.c.after_lease,
        )
        .select_from(scanned.outerjoin(rescue_lease, true()))
        .where(~_held(scanned.c.key))
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
        rescued_keys.c.after_lease.label("after_seen"),
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
            key_candidates.c.after_seen,
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
            ready.c.after_seen,
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
    # What the snapshot saw of each key's lease, carried along to where the lease is written.
    seen = {
        "lease_seen": grabbed.c.lease_seen,
        "after_seen": grabbed.c.after_seen,
        "floor_seen": grabbed.c.floor_id.label("floor_seen"),
    }
    live = _in_key_order(
        grabbed.c.key, grabbed.c.floor_seq, grabbed.c.floor_id, func.least(grabbed.c.seen, _limit())
    ).lateral("live")
    heads = (
        select(
            grabbed.c.key,
            grabbed.c.since,
            grabbed.c.first_id,
            live.c.id,
            live.c.seq,
            *seen.values(),
        )
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
        *(heads.c[name] for name in seen),
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
        *(null().label(name) for name in seen),
        literal(1).label("ord"),
    ).where(pool.c.key.is_(None))
    prefixes = select(
        ranked.c.id,
        ranked.c.key,
        ranked.c.since,
        ranked.c.first_id,
        ranked.c.seq,
        *(ranked.c[name] for name in seen),
        ranked.c.ord,
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
            POSITION_SEQUENCE.next_value().label("lease_no"),
            func.min(picked.c.seq).label("first_seq"),
            func.max(picked.c.id).filter(picked.c.seq.is_(None)).label("last_new_id"),
            *(func.min(picked.c[name]).label(name) for name in seen),  # one value per key
        )
        .where(picked.c.key.isnot(None))
        .group_by(picked.c.key)
        .order_by(picked.c.key)
        .cte("numbered")
        .prefix_with("MATERIALIZED")
    )
    # The latest lease each key had on the snapshot, superseded under its row lock: one
    # superseded (or deleted) since is not updated, and its key is not taken.
    superseded = (
        update(leases_table)
        .where(
            leases.key == numbered.c.key,
            leases.after_lease == numbered.c.after_seen,
            ~leases.superseded,
        )
        .values(superseded=True)
        .returning(leases.key)
        .cte("superseded")
    )
    new_leases = (
        select(
            numbered.c.key,
            func.coalesce(numbered.c.lease_seen, 0),
            numbered.c.lease_no,
            func.coalesce(numbered.c.first_seq, numbered.c.lease_no),
            func.coalesce(numbered.c.last_new_id + 1, numbered.c.floor_seen),
            sql.CLOCK,
        )
        .where(
            or_(
                # A key's first lease: claims that both saw none collide on (key, 0).
                numbered.c.lease_seen.is_(None),
                numbered.c.key == func.any(func.array(select(superseded.c.key).scalar_subquery())),
            )
        )
        .order_by(numbered.c.key)
    )
    leased = (
        insert(leases_table)
        .from_select(
            ["key", "after_lease", "lease_no", "floor_seq", "floor_id", "leased_at"], new_leases
        )
        .on_conflict_do_nothing(index_elements=[leases.key, leases.after_lease])
        .returning(leases.key)
        .cte("leased")
    )
    # Positions in each key's order: nextval() runs in the order of this ordered subquery.
    granted = (
        select(picked.c.id, picked.c.seq)
        # One array of the leased keys, read once (as "IN (subquery)" the planner may make it
        # a nested loop over the leases per row).
        .where(picked.c.key == func.any(func.array(select(leased.c.key).scalar_subquery())))
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


def _latest_lease(key: Any) -> Any:
    """``key``'s latest lease on the snapshot, as a LATERAL subquery (no row: never leased, or
    not for ``LOCK_SECONDS``): a backward scan of ``outbox_key_leases``' primary key, which
    meets the newest entries first and stops at the first visible one, however many older
    leases a held snapshot keeps from vacuum."""
    return (
        select(leases.after_lease, leases.lease_no, leases.floor_seq, leases.floor_id)
        .where(leases.key == key)
        .order_by(leases.after_lease.desc())
        .limit(1)
        .lateral("lease")
    )


def _held(key: Any) -> Any:
    """Whether ``key`` waits behind a dead head (one probe of ``outbox_keys``)."""
    return select(literal(1)).where(keys.key == key, keys.held_by.isnot(None)).exists()


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


# -- ending leases: a row that goes dead may hold its key ----------------------------------


def _returning(ends_leases: Update, *returned: str) -> Select[Any]:
    """``ends_leases`` (returning :data:`~outbox.storage.statements.CHANGED_COLUMNS`),
    returning only the ``returned`` columns."""
    changed = ends_leases.cte("changed")
    return select(*(changed.c[name] for name in returned))


def holding_keys(ends_leases: Update, *returned: str) -> Select[Any]:
    """``ends_leases`` (returning :data:`~outbox.storage.statements.CHANGED_COLUMNS`), with,
    when ``:hold_dead`` (default false), each key whose positioned row went ``dead`` here
    held behind it (``outbox_keys.held_by``: the first such row in the key's order) until
    that row is retried or purged (triggers of migration ``outbox_0005``); returns the
    ``returned`` columns. Nothing else about a key is written when its rows' leases end."""
    changed = ends_leases.cte("changed")
    hold = bindparam("hold_dead", value=False, type_=Boolean)
    dead_heads = (
        select(
            changed.c.key,
            type_coerce(
                func.array_agg(aggregate_order_by(changed.c.id, changed.c.seq)), ARRAY(BigInteger)
            )[1].label("dead_head"),
        )
        .where(
            hold, changed.c.status == sql.DEAD, changed.c.key.isnot(None), changed.c.seq.isnot(None)
        )
        .group_by(changed.c.key)
        .order_by(changed.c.key)
    )
    upsert = insert(keys_table).from_select(["key", "held_by"], dead_heads)
    held = (
        upsert.on_conflict_do_update(
            index_elements=[keys.key],
            set_={"held_by": func.coalesce(keys.held_by, upsert.excluded.held_by)},
        )
        .returning(keys.key)
        .cte("held")
    )
    return select(*(changed.c[name] for name in returned)).add_cte(held)


MARK_PUBLISHED = _returning(sql.MARK_PUBLISHED, "id")
MARK_DEAD = holding_keys(sql.MARK_DEAD, "id")
RESCHEDULE = holding_keys(sql.RESCHEDULE, "id", "status")
RELEASE = _returning(sql.RELEASE, "id")
REAP = holding_keys(sql.REAP, "id", "status")
EXTEND_LEASE = sql.EXTEND_LEASE  # a heartbeat keeps the key's lease as it is


# -- housekeeping ---------------------------------------------------------------------------

_candidate = leases_table.alias("candidate")
_other = leases_table.alias("other")
_alone = ~(
    select(literal(1))
    .where(_other.c.key == _candidate.c.key, _other.c.after_lease != _candidate.c.after_lease)
    .exists()
)
PRUNE_LEASES = (
    leases_table.delete()
    .where(
        tuple_(leases.key, leases.after_lease).in_(
            select(_candidate.c.key, _candidate.c.after_lease)
            .where(
                _candidate.c.leased_at < sql.CLOCK - bindparam("idle", type_=Interval()),
                or_(_candidate.c.superseded, _alone),
            )
            .limit(_limit())
            .with_for_update(of=_candidate, skip_locked=True)
        )
    )
    .returning(leases.key)
)
"""Up to ``:limit`` leases taken before ``now - :idle`` are deleted: superseded ones, and a
key's last one once it is the key's only row (then the key's next claim reads it from its
first entry). Rows a claim holds are skipped. A claim that saw a deleted lease finds it gone
under the lock and leaves the key alone; ``:idle`` (``LOCK_SECONDS``) is longer than any
claim statement, so a claim that saw no lease still collides with the leases taken since."""

DELETE_FREE_KEYS = (
    keys_table.delete()
    .where(
        keys.key
        == func.any(
            func.array(
                select(keys.key)
                .where(keys.held_by.is_(None))
                .limit(_limit())
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
        ),
        keys.held_by.is_(None),
    )
    .returning(keys.key)
)
"""Up to ``:limit`` rows of ``outbox_keys`` that hold no key are deleted (a released hold, or
a lease row of a worker older than migration ``outbox_0007``)."""

_batch_in_flight = select(func.count(func.distinct(col.key))).where(
    col.status == sql.IN_PROGRESS, col.key.isnot(None), col.seq.isnot(None)
)
KEY_COUNTS: Select[int, int] = select(
    _batch_in_flight.scalar_subquery(),
    select(func.count()).select_from(keys_table).where(keys.held_by.isnot(None)).scalar_subquery(),
)
"""``(keys with a batch in flight, keys held behind a dead head)``."""
