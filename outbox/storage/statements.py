"""Every SQL statement the library runs against the outbox table, built once.

With :mod:`outbox.storage.key_order` (the ordered claim and the key leases), the only
module that builds SQL. Statements are SQLAlchemy Core templates with named bind
parameters, built at import (or once per type filter, cached), so the hot path never
rebuilds or recompiles them. Callers pass the values at execution.

Conventions shared by the templates:

* ``:now`` -- ``NULL`` means the database clock (``statement_timestamp()``: the start of
  the statement, shared by all workers, and not held back by a long caller transaction);
  a timestamp steps time in tests.
* Status values are SQL literals, not parameters, so PostgreSQL matches the partial
  indexes' predicates even under generic (prepared) plans.
* Acknowledgements join ``unnest(:lease_ids, :lease_tokens, ...) AS lease`` and apply
  only where the row is still ``in_progress`` under that exact claim (fencing).
* Id lists are one array parameter (``= ANY(:ids)``), never one parameter per id.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    ColumnElement,
    CompoundSelect,
    DateTime,
    Float,
    Integer,
    Interval,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    table,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.sql.dml import Insert, ReturningDelete, Update
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.sql.expression import CTE, ScalarSelect

from outbox.primitives.prefixes import TypeRange
from outbox.storage.schema import Status, outbox_table

__all__ = [
    "CHANGED_COLUMNS",
    "CLAIMED_COLUMNS",
    "COUNT_DEAD_BEFORE",
    "COUNT_PUBLISHED_BEFORE",
    "DATABASE_CLOCK",
    "DEAD_COLUMNS",
    "ENQUEUE",
    "EXTEND_LEASE",
    "LIVE_BY_PREFIX",
    "LIVE_TOTALS",
    "MARK_DEAD",
    "MARK_PUBLISHED",
    "OLDEST_CLAIMABLE_AGE",
    "PUBLISHED_IN_WINDOW",
    "PURGE_DEAD",
    "PURGE_PUBLISHED",
    "REAP",
    "RELEASE",
    "RESCHEDULE",
    "SELECT_BY_DEDUPE_KEY",
    "STATUS_OF_IDS",
    "TABLE_EXISTS",
    "TABLE_GAUGES",
    "claim",
    "counts_by_prefix_and_status",
    "dead_batch",
    "dead_newest_first",
    "migration_revisions",
    "retry_dead_batch",
]

col = outbox_table.c
"""The outbox table's columns, as every statement below names them."""

PENDING = literal_column(f"'{Status.PENDING.value}'", Text)
IN_PROGRESS = literal_column(f"'{Status.IN_PROGRESS.value}'", Text)
PUBLISHED = literal_column(f"'{Status.PUBLISHED.value}'", Text)
DEAD = literal_column(f"'{Status.DEAD.value}'", Text)

CLOCK = func.coalesce(bindparam("now", type_=DateTime(timezone=True)), func.statement_timestamp())
"""``:now`` if given, else the database clock."""

SECOND = literal_column("interval '1 second'", Interval())
"""A number of seconds times this is an interval."""

_TIMESTAMP = DateTime(timezone=True)
_INFINITY = cast(literal_column("'infinity'"), _TIMESTAMP)
_MINUS_INFINITY = cast(literal_column("'-infinity'"), _TIMESTAMP)

SINCE = func.coalesce(bindparam("since", type_=_TIMESTAMP), _MINUS_INFINITY)
"""Where a claim's walk starts (``:since``; ``NULL``: from the oldest row). A bound on the
claim indexes' first column, so the walk begins there instead of reading every entry before
it (entries of rows claimed since the last vacuum, kept while a snapshot is held): see
:class:`outbox.storage.frontier.ClaimFrontier`."""


def claimable_row() -> tuple[ColumnElement[bool], ...]:
    """A given row (found by id) is claimable: ``pending`` and due. The status is tested as
    ``IS NOT DISTINCT FROM`` so that the planner cannot prove the claim indexes' predicate
    (``status = 'pending'``) from it: it finds such rows by primary key, never by walking a
    claim index and filtering by id, which reads every entry the index holds (with a
    snapshot held, every row claimed since it was taken)."""
    return (col.status.is_not_distinct_from(PENDING), col.next_attempt_at <= CLOCK)


CLAIMED_COLUMNS = (
    col.id,
    col.type,
    col.key,
    # As text: the claim decodes each row's payload itself, so that one row no reader can
    # decode fails alone instead of failing the whole claimed batch in the driver.
    cast(col.payload, Text).label("payload"),
    col.attempts,
    col.created_at,
    col.next_attempt_at,
    col.locked_by,
    col.locked_until,
    col.error,
    col.lease_token,
    col.seq,
)

# -- enqueue -------------------------------------------------------------------------------

_MESSAGES = (
    func.unnest(
        bindparam("types", type_=ARRAY(Text)),
        bindparam("keys", type_=ARRAY(Text)),
        bindparam("payloads", type_=ARRAY(Text)),
        bindparam("dedupe_keys", type_=ARRAY(Text)),
        bindparam("available_ats", type_=ARRAY(DateTime(timezone=True))),
        bindparam("delays", type_=ARRAY(Float)),
    )
    .table_valued(
        column("type", Text),
        column("key", Text),
        column("payload", Text),
        column("dedupe_key", Text),
        column("available_at", DateTime(timezone=True)),
        column("delay", Float),
        with_ordinality="ordinal",
    )
    .render_derived(name="m")
)

ENQUEUE: Insert = (
    insert(outbox_table)
    .from_select(
        ["type", "key", "payload", "dedupe_key", "next_attempt_at"],
        select(
            _MESSAGES.c.type,
            _MESSAGES.c.key,
            cast(_MESSAGES.c.payload, JSONB),
            _MESSAGES.c.dedupe_key,
            func.coalesce(
                _MESSAGES.c.available_at,
                func.statement_timestamp() + _MESSAGES.c.delay * SECOND,
            ),
        ).order_by(_MESSAGES.c.ordinal),
    )
    .on_conflict_do_nothing(index_elements=[col.dedupe_key], index_where=col.dedupe_key.isnot(None))
    .returning(col.id, col.dedupe_key)
)
"""Insert messages given as parallel arrays (payloads as JSON text, delays in seconds).

``ORDER BY ordinal`` makes the identity ids ascend in input order. Rows whose dedupe key
exists already are skipped (``ON CONFLICT DO NOTHING``). Returns ``(id, dedupe_key)`` of
the inserted rows, in no particular order."""

SELECT_BY_DEDUPE_KEY: Select[Any] = select(col.id, col.dedupe_key).where(
    col.dedupe_key == func.any(bindparam("wanted", type_=ARRAY(Text)))
)
"""``(id, dedupe_key)`` of the rows holding any of the ``:wanted`` keys."""

# -- claim ---------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def claim(filtered: bool) -> CompoundSelect[Any]:
    """The claim, as one statement: every type, or (``filtered``) the types in the ranges
    ``[:type_lows[i], :type_highs[i])`` (see :func:`~outbox.primitives.prefixes.type_bounds`).

    Parameters: ``:limit``, ``:worker_id``, ``:lease`` (interval), ``:now``, ``:since``,
    ``:lookback`` (interval); filtered also ``:walk``, ``:pool``, ``:type_lows``,
    ``:type_highs``. Stage 1 (``candidates``) picks the oldest claimable ids from ``:since``
    on, locking them and skipping rows other claimers hold; stage 2 leases those rows and
    counts the attempt. Returns :func:`with_frontier` rows. The filter is bound parameters,
    not statement text, so every filter shares one statement and one plan.
    """
    if filtered:
        pool = claimable_pool(filtered=True)
        candidates = _oldest_claimable_in_ranges(pool)
        oldest_seen = pool.c.next_attempt_at
    else:
        candidates = _oldest_claimable()
        oldest_seen = candidates.c.next_attempt_at
    # "id = ANY(ARRAY(candidates))" rather than a join: whatever the planner guesses for an
    # unknown :limit (generic plans), the update stays primary-key lookups.
    chosen = func.array(select(candidates.c.id).scalar_subquery())
    claimed = (
        update(outbox_table)
        .where(col.id == func.any(chosen))
        .values(
            status=IN_PROGRESS,
            attempts=col.attempts + 1,
            locked_by=bindparam("worker_id", type_=Text),
            locked_until=CLOCK + bindparam("lease", type_=Interval()),
            lease_token=func.gen_random_uuid(),
        )
        .returning(*CLAIMED_COLUMNS)
    )
    return with_frontier(claimed, oldest_seen)


def with_frontier(claimed: Update, oldest_seen: Any) -> CompoundSelect[Any]:
    """The rows ``claimed`` returns (:data:`CLAIMED_COLUMNS`, then ``frontier`` NULL), and
    one row more: every column NULL but ``frontier``, where the next claim may start its
    walk (its ``:since``): the oldest claimable row this claim saw (``oldest_seen``, taken
    or not), or if it saw none, ``:now - :lookback``, whichever is older. A row that
    commits later than ``:lookback`` after its ``next_attempt_at`` may fall behind it:
    :class:`~outbox.storage.frontier.ClaimFrontier` walks from the start now and then."""
    rows = claimed.cte("claimed")
    frontier = func.least(
        select(func.min(oldest_seen)).scalar_subquery(),
        CLOCK - bindparam("lookback", type_=Interval()),
    )
    return union_all(
        select(rows, cast(null(), DateTime(timezone=True)).label("frontier")),
        select(*(null().label(c.name) for c in rows.c), frontier.label("frontier")),
    )


def _limit() -> Any:
    return bindparam("limit", type_=Integer)


def _oldest_claimable() -> CTE:
    """Unfiltered: walk ``ix_outbox_claimable`` in order and stop after ``limit`` rows."""
    return (
        select(col.id, col.next_attempt_at)
        .where(col.status == PENDING, col.next_attempt_at <= CLOCK, col.next_attempt_at >= SINCE)
        .order_by(col.next_attempt_at, col.id)
        .limit(_limit())
        .with_for_update(skip_locked=True)
        .cte("candidates")
    )


def _type_ranges() -> Any:
    """The filter's ranges as rows ``(low, high)``, from the ``:type_lows``/``:type_highs``
    arrays (a fresh FROM item at each use)."""
    return (
        func.unnest(
            bindparam("type_lows", type_=ARRAY(Text)), bindparam("type_highs", type_=ARRAY(Text))
        )
        .table_valued(column("low", Text(collation="C")), column("high", Text(collation="C")))
        .render_derived(name="ranges")
    )


def _oldest_claimable_in_ranges(pool: CTE) -> CTE:
    """Filtered by type: the same rows and order as unfiltered, at about the same cost.

    Of :func:`claimable_pool`'s ``:pool`` oldest, lock the oldest ``:limit`` still
    claimable, skipping rows other claimers hold (``FOR UPDATE SKIP LOCKED``; the status is
    re-checked on the locked row). Only the claimed rows are locked. ``:pool`` is larger
    than ``:limit`` (see :data:`~outbox.primitives.constants.FILTERED_CLAIM_POOL_FACTOR`) so
    that claimers racing for the same oldest rows still fill their batches.
    """
    pool_size = bindparam("pool", type_=Integer)
    oldest = select(pool.c.id).order_by(pool.c.next_attempt_at, pool.c.id).limit(pool_size)
    return (
        select(col.id)
        .where(col.id == func.any(func.array(oldest.scalar_subquery())), *claimable_row())
        .order_by(col.next_attempt_at, col.id)
        .limit(_limit())
        .with_for_update(skip_locked=True)
        .cte("candidates")
    )


def claimable_pool(*, filtered: bool) -> CTE:
    """Claimable rows ``(id, key, next_attempt_at)`` to claim from, oldest first, unlocked.

    Unfiltered: the oldest ``:walk`` claimable rows (``ix_outbox_claimable``). Filtered by
    the types in the ranges:

    1. ``walk``: the oldest ``:walk`` claimable rows of any type, in ``ix_outbox_claimable``
       order, no locks (a bounded read, whatever the planner knows of the table), each
       marked ``wanted`` when its type is in a range;
    2. ``decision``: when at least ``:limit`` of them are wanted, or the walk saw every
       claimable row, the wanted ones are the oldest claimable rows of the wanted types,
       and they are the pool;
    3. only otherwise (the walk met mostly other types: an older backlog of an excluded
       domain), the per-type merge: the distinct pending types inside the ranges, found by a
       loose index scan of ``ix_outbox_claimable_type``, and per type its oldest ``:pool``
       claimable rows, merged by age. Its cost grows with the number of distinct pending
       types in the ranges, never with the other backlog. A one-time filter skips it
       entirely when the walk decided.
    """
    walk_size = bindparam("walk", type_=Integer)
    if not filtered:
        return (
            select(col.id, col.key, col.next_attempt_at)
            .where(
                col.status == PENDING, col.next_attempt_at <= CLOCK, col.next_attempt_at >= SINCE
            )
            .order_by(col.next_attempt_at, col.id)
            .limit(walk_size)
            .cte("pool")
            .prefix_with("MATERIALIZED")
        )
    pool_size = bindparam("pool", type_=Integer)
    walk = (
        select(col.id, col.key, col.next_attempt_at, in_type_ranges().label("wanted"))
        .where(col.status == PENDING, col.next_attempt_at <= CLOCK, col.next_attempt_at >= SINCE)
        .order_by(col.next_attempt_at, col.id)
        .limit(walk_size)
        .cte("walk")
        .prefix_with("MATERIALIZED")
    )
    decision = select(
        or_(
            func.count().filter(walk.c.wanted) >= _limit(),
            func.count() < walk_size,
        ).label("walk_decides")
    ).cte("decision")
    walk_decides = select(decision.c.walk_decides).scalar_subquery()
    merged = _oldest_per_type(pool_size)
    return union_all(
        select(walk.c.id, walk.c.key, walk.c.next_attempt_at).where(walk.c.wanted, walk_decides),
        select(merged.c.id, merged.c.key, merged.c.next_attempt_at).where(~walk_decides),
    ).cte("pool")


def in_type_ranges() -> Any:
    """Whether the row's ``type`` is in one of the ranges ``:type_lows``/``:type_highs``."""
    ranges = _type_ranges()
    return (
        select(literal(1))
        .select_from(ranges)
        .where(col.type >= ranges.c.low, col.type < ranges.c.high)
        .exists()
    )


def _oldest_per_type(pool_size: Any) -> Any:
    """The oldest ``pool_size`` claimable rows of the pending types in the ranges, read per
    type from ``ix_outbox_claimable_type`` (a LATERAL probe per type, merged by age)."""
    pending_types = _pending_types()
    per_type = (
        select(col.id, col.key, col.next_attempt_at)
        .where(
            col.status == PENDING,
            # A range of one type, not "type = ...": an equality would make ``type`` a
            # constant and drop it from the ORDER BY, and a plan made on stale statistics
            # could then walk ix_outbox_claimable and filter by type (reading the other
            # domain's backlog). Ordered by type first, only ix_outbox_claimable_type
            # delivers these rows in order.
            col.type >= pending_types.c.type,
            col.type <= pending_types.c.type,
            col.next_attempt_at <= CLOCK,
            col.next_attempt_at >= SINCE,
        )
        .order_by(col.type, col.next_attempt_at, col.id)
        .limit(pool_size)
        .lateral("per_type")
    )
    return (
        select(per_type.c.id, per_type.c.key, per_type.c.next_attempt_at)
        .select_from(pending_types.join(per_type, true()))
        .where(pending_types.c.type.isnot(None))
        .order_by(per_type.c.next_attempt_at, per_type.c.id)
        .limit(pool_size)
        .subquery("merged")
    )


def _pending_types() -> CTE:
    """Recursive CTE of the distinct pending types in each range, by a loose index scan:
    per range, one ``ix_outbox_claimable_type`` probe per type (``NULL`` ends a range)."""
    ranges = _type_ranges()
    first = (
        select(
            select(func.min(col.type))
            .where(col.status == PENDING, col.type >= ranges.c.low, col.type < ranges.c.high)
            .scalar_subquery()
            .label("type"),
            ranges.c.high.label("high"),
        )
        .select_from(ranges)
        .cte("pending_types", recursive=True)
    )
    step = select(
        select(func.min(col.type))
        .where(col.status == PENDING, col.type > first.c.type, col.type < first.c.high)
        .scalar_subquery(),
        first.c.high,
    ).where(first.c.type.isnot(None))
    return first.union_all(step)


# -- acknowledgements ----------------------------------------------------------------------


LEASE_ENDED: dict[str, Any] = {"locked_by": null(), "locked_until": null(), "lease_token": null()}
"""The values that end a lease (SQL NULLs, not bound parameters)."""

CHANGED_COLUMNS = (col.id, col.status, col.key, col.seq)
"""What every statement that ends a lease returns: ``(id, new status, key, seq)``; the key
and position let :mod:`outbox.storage.key_order` free the key's lease in the same statement."""

_LEASE_IDS = bindparam("lease_ids", type_=ARRAY(BigInteger))
_LEASE_TOKENS = bindparam("lease_tokens", type_=ARRAY(UUID(as_uuid=True)))

# The fence: the row is one of ours (primary-key probes on :lease_ids) and still carries the
# token our claim gave it. Tokens are fresh random UUIDs per row and claim, so a row whose
# token is in :lease_tokens is paired with it; no join is needed, and none is left for a
# generic (prepared) plan to get wrong: a join with unnest() went to a nested loop over all
# leased rows, 50 ms per 500-row acknowledgement against 5 ms for this form.
FENCED: tuple[ColumnElement[bool], ...] = (
    col.id == func.any(_LEASE_IDS),
    col.lease_token == func.any(_LEASE_TOKENS),
    col.status == IN_PROGRESS,
    col.locked_by == bindparam("worker_id", type_=Text),
)


def _per_lease(name: str, sql_type: Any) -> Any:
    """``:lease_<name>`` at this row's position in ``:lease_ids`` (one value per message)."""
    values = Grouping(bindparam(f"lease_{name}", type_=ARRAY(sql_type)))
    return values[func.array_position(_LEASE_IDS, col.id)]


MARK_PUBLISHED: Update = (
    update(outbox_table)
    .where(*FENCED)
    .values(
        status=PUBLISHED,
        published_at=CLOCK,
        **LEASE_ENDED,
        error=null(),
    )
    .returning(*CHANGED_COLUMNS)
)
"""Leased rows -> ``published``. Returns :data:`CHANGED_COLUMNS` of the rows it changed."""

MARK_DEAD: Update = (
    update(outbox_table)
    .where(*FENCED)
    .values(
        status=DEAD,
        error=_per_lease("error", Text),
        **LEASE_ENDED,
    )
    .returning(*CHANGED_COLUMNS)
)
"""Leased rows -> ``dead`` with ``:lease_error``. Returns :data:`CHANGED_COLUMNS`."""

RESCHEDULE: Update = (
    update(outbox_table)
    .where(*FENCED)
    .values(
        status=case(
            (col.attempts >= bindparam("max_attempts", type_=Integer), DEAD), else_=PENDING
        ),
        next_attempt_at=CLOCK + _per_lease("delay", Float) * SECOND,
        error=_per_lease("error", Text),
        **LEASE_ENDED,
    )
    .returning(*CHANGED_COLUMNS)
)
"""Leased rows -> ``pending`` after ``:lease_delay`` seconds, or ``dead`` once their
attempts reach ``:max_attempts``; ``error`` from ``:lease_error``. Returns
:data:`CHANGED_COLUMNS` (with the new status)."""

EXTEND_LEASE: Update = (
    update(outbox_table)
    .where(*FENCED)
    # A heartbeat never shortens a lease.
    .values(
        locked_until=func.greatest(col.locked_until, CLOCK + bindparam("lease", type_=Interval()))
    )
    .returning(col.id)
)
"""Leased rows' lease -> at least ``now + :lease``. Returns the ids it changed."""

RELEASE: Update = (
    update(outbox_table)
    .where(*FENCED)
    .values(
        status=PENDING,
        attempts=col.attempts - 1,
        # Due now (:hold NULL) or after :hold: never an older time, which would put the row
        # behind the walks' frontier (SINCE) until their next walk from the start.
        next_attempt_at=CLOCK
        + func.coalesce(bindparam("hold", type_=Interval()), literal_column("interval '0'")),
        **LEASE_ENDED,
    )
    .returning(*CHANGED_COLUMNS)
)
"""Leased rows -> ``pending``, the attempt uncounted. Returns :data:`CHANGED_COLUMNS`."""

# -- maintenance and reads -----------------------------------------------------------------

_expired = (
    select(col.id)
    .where(col.status == IN_PROGRESS, col.locked_until < CLOCK)
    .order_by(col.locked_until)
    .limit(_limit())
    .with_for_update(skip_locked=True)
    .cte("expired")
)

REAP: Update = (
    update(outbox_table)
    .where(col.id == func.any(func.array(select(_expired.c.id).scalar_subquery())))
    .values(
        status=case(
            (col.attempts >= bindparam("max_attempts", type_=Integer), DEAD), else_=PENDING
        ),
        next_attempt_at=CLOCK,
        error=literal("lease expired (held by ")
        + func.coalesce(col.locked_by, literal("?"))
        + literal(") after attempt ")
        + cast(col.attempts, Text),
        **LEASE_ENDED,
    )
    .returning(*CHANGED_COLUMNS)
)
"""Up to ``:limit`` leases that ended before ``now`` -> ``pending`` (due at once), or
``dead`` at ``:max_attempts``. Returns :data:`CHANGED_COLUMNS` (with the new status)."""

_prefix = case(
    (func.strpos(col.type, ".") > 0, func.split_part(col.type, ".", 1) + literal(".", Text)),
    else_=col.type,
).label("prefix")

counts_by_prefix_and_status: Select[Any] = select(_prefix, col.status, func.count()).group_by(
    _prefix, col.status
)
"""``(type prefix, status, count)`` for every combination present."""

OLDEST_CLAIMABLE_AGE: Select[Any] = select(
    func.extract("epoch", CLOCK - func.min(col.next_attempt_at))
).where(col.status == PENDING, col.next_attempt_at <= CLOCK)
"""Seconds since the longest-waiting claimable row became due (``NULL``: none)."""


def _count_where(*conditions: ColumnElement[bool]) -> ScalarSelect[Any]:
    return select(func.count()).select_from(outbox_table).where(*conditions).scalar_subquery()


TABLE_GAUGES: Select[Any] = select(
    _count_where(col.status == PENDING),
    _count_where(col.status == IN_PROGRESS),
    _count_where(col.status == DEAD),
    OLDEST_CLAIMABLE_AGE.scalar_subquery(),
)
"""``(pending, in_progress, dead, oldest claimable age or NULL)``: each count reads only its
status's partial index, never the published rows."""

# -- operator commands (outbox.storage.admin, the ``outbox`` CLI) ----------------------------------
#
# Dead rows are aged by ``dead_at`` (set by a trigger whenever a row becomes dead) on
# ``ix_outbox_dead_at``; published rows by ``published_at`` on ``ix_outbox_published_at``.
# ``:died_before`` / ``:died_after`` bound a dead range (``NULL``: unbounded), ``:ids``
# (when the statement was built ``by_id``) names rows, and a type prefix is a range of the
# "C"-collated ``type`` (see ``outbox.primitives.prefixes``).
#
# Batched statements walk a keyset cursor ``(:cursor_at, :cursor_id)`` (``NULL``: from the
# start) over ``(age, id)``, so each batch starts where the last one ended: rows an earlier
# batch changed or deleted are not read again, even while an old snapshot keeps their
# index entries alive. (The published purge keys on ``published_at`` alone; see there.)


DATABASE_CLOCK: Select[Any] = select(CLOCK)
"""``:now`` if given, else the database clock: the one reference time of a command."""

TABLE_EXISTS: Select[Any] = select(
    func.to_regclass(bindparam("table_name", type_=Text)).isnot(None)
)
"""Whether ``:table_name`` resolves to a table on the search path."""


@lru_cache(maxsize=8)
def migration_revisions(version_table: str) -> Select[Any]:
    """The revisions recorded in Alembic's ``version_table``, in name order."""
    versions = table(version_table, column("version_num", Text))
    return select(versions.c.version_num).order_by(versions.c.version_num)


STATUS_OF_IDS: Select[Any] = select(col.id, col.status).where(
    col.id == func.any(bindparam("ids", type_=ARRAY(BigInteger)))
)
"""``(id, status)`` of the rows among ``:ids`` that exist."""

DEAD_COLUMNS = (col.id, col.type, col.key, col.attempts, col.created_at, col.dead_at, col.error)


def _in_ranges(ranges: tuple[TypeRange, ...]) -> ColumnElement[bool]:
    """``type`` inside one of ``ranges`` (an empty tuple matches nothing)."""
    alternatives = []
    for low, high in ranges:
        bounds = [col.type >= low] if low is not None else []
        bounds += [col.type < high] if high is not None else []
        alternatives.append(and_(true(), *bounds))
    return or_(false(), *alternatives)


def _dead(by_id: bool, ranges: tuple[TypeRange, ...] | None) -> list[ColumnElement[bool]]:
    """Dead rows that died inside ``(:died_after, :died_before)``, optionally among ``:ids``
    and inside the type ``ranges`` (``None``: every type)."""
    died_before = bindparam("died_before", type_=_TIMESTAMP)
    died_after = bindparam("died_after", type_=_TIMESTAMP)
    conditions = [
        col.status == DEAD,
        col.dead_at < func.coalesce(died_before, _INFINITY),
        col.dead_at > func.coalesce(died_after, _MINUS_INFINITY),
    ]
    if by_id:
        conditions.append(col.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
    if ranges is not None:
        conditions.append(_in_ranges(ranges))
    return conditions


@lru_cache(maxsize=64)
def dead_newest_first(by_id: bool, ranges: tuple[TypeRange, ...] | None) -> Select[Any]:
    """Up to ``:limit`` selected dead rows, latest death first (``dead_at``, then ``id``,
    descending). Returns :data:`DEAD_COLUMNS`."""
    return (
        select(*DEAD_COLUMNS)
        .where(*_dead(by_id, ranges))
        .order_by(col.dead_at.desc(), col.id.desc())
        .limit(_limit())
    )


def _after_cursor(age: ColumnElement[datetime], *conditions: ColumnElement[bool]) -> Select[Any]:
    """The next ``:limit`` rows meeting ``conditions`` after the cursor, in ``(age, id)``
    order. Returns ``(id, age)``."""
    cursor_at = func.coalesce(bindparam("cursor_at", type_=_TIMESTAMP), _MINUS_INFINITY)
    cursor_id = func.coalesce(bindparam("cursor_id", type_=BigInteger), 0)
    return (
        select(col.id, age)
        .where(
            *conditions,
            # The first gives the index its range; the second is the exact cursor.
            age >= cursor_at,
            tuple_(age, col.id) > tuple_(cursor_at, cursor_id),
        )
        .order_by(age, col.id)
        .limit(_limit())
    )


@lru_cache(maxsize=64)
def dead_batch(by_id: bool, ranges: tuple[TypeRange, ...] | None) -> Select[Any]:
    """What :func:`retry_dead_batch` would take, without locking or changing anything.
    Returns ``(id, dead_at)``, earliest death first."""
    return _after_cursor(col.dead_at, *_dead(by_id, ranges))


def _chosen_ids(chosen: CTE) -> ColumnElement[bool]:
    """``id`` among the CTE's ids: an index probe per id whatever the plan (a join with the
    CTE may become a hash join over the whole table under a generic plan)."""
    return col.id == func.any(func.array(select(chosen.c.id).scalar_subquery()))


@lru_cache(maxsize=64)
def retry_dead_batch(by_id: bool, ranges: tuple[TypeRange, ...] | None) -> Select[Any]:
    """The next ``:limit`` selected dead rows after the cursor -> ``pending``, due at
    ``now``, ``attempts = 0``, lease columns cleared (the trigger clears ``dead_at``);
    ``error`` keeps the last reason.

    Rows another transaction holds are skipped (``FOR UPDATE SKIP LOCKED``); every row
    chosen is changed (it is locked). Returns ``(id, dead_at)`` of the changed rows as they
    were before, for the caller's cursor: a ``SELECT`` whose CTE runs the ``UPDATE``.
    """
    chosen = (
        _after_cursor(col.dead_at, *_dead(by_id, ranges))
        .with_for_update(skip_locked=True)
        .cte("chosen")
    )
    retried = (
        update(outbox_table)
        .where(_chosen_ids(chosen))
        .values(status=PENDING, attempts=0, next_attempt_at=CLOCK, **LEASE_ENDED)
        .cte("retried")
    )
    return select(chosen.c.id, chosen.c.dead_at).add_cte(retried)


def _purge(chosen: Select[Any], age: Column[datetime]) -> ReturningDelete[Any]:
    """Delete the rows ``chosen`` selects (locking them, skipping locked ones); return
    ``(id, age)`` of each."""
    picked = chosen.with_for_update(skip_locked=True).cte("chosen")
    return delete(outbox_table).where(_chosen_ids(picked)).returning(col.id, age)


_OLD_ENOUGH = bindparam("cutoff", type_=_TIMESTAMP)

PURGE_PUBLISHED: ReturningDelete[Any] = _purge(
    # ``published_at`` alone (the index has no ``id``): the cursor is ``>= :cursor_at``, so
    # a batch reads again only the rows of the last batch's final instant. Rows published
    # in one instant are one acknowledgement's batch at most, unless written by hand.
    select(col.id)
    .where(
        col.status == PUBLISHED,
        col.published_at < _OLD_ENOUGH,
        col.published_at
        >= func.coalesce(bindparam("cursor_at", type_=_TIMESTAMP), _MINUS_INFINITY),
    )
    .order_by(col.published_at)
    .limit(_limit()),
    col.published_at,
)
"""Delete the next ``:limit`` published rows with ``published_at < :cutoff``, from
``:cursor_at`` on, oldest first, skipping locked rows (``ix_outbox_published_at``).
Returns ``(id, published_at)`` of the deleted rows."""

PURGE_DEAD: ReturningDelete[Any] = _purge(
    _after_cursor(col.dead_at, col.status == DEAD, col.dead_at < _OLD_ENOUGH), col.dead_at
)
"""Delete the next ``:limit`` dead rows with ``dead_at < :cutoff`` after the exact cursor
``(:cursor_at, :cursor_id)``, earliest death first, skipping locked rows
(``ix_outbox_dead_at``). Returns ``(id, dead_at)`` of the deleted rows."""

COUNT_PUBLISHED_BEFORE: Select[Any] = (
    select(func.count())
    .select_from(outbox_table)
    .where(col.status == PUBLISHED, col.published_at < bindparam("cutoff", type_=_TIMESTAMP))
)
"""How many rows :data:`PURGE_PUBLISHED` would delete in all (``:cutoff``)."""

COUNT_DEAD_BEFORE: Select[Any] = (
    select(func.count())
    .select_from(outbox_table)
    .where(col.status == DEAD, col.dead_at < bindparam("cutoff", type_=_TIMESTAMP))
)
"""How many rows :data:`PURGE_DEAD` would delete in all (``:cutoff``)."""

# ``outbox top``: each sample reads the partial indexes, the primary key's last entry and
# the rows published inside the window ``(:since, :until]``; never the published history.

LIVE_TOTALS: Select[Any] = select(
    CLOCK,
    select(func.max(col.id)).scalar_subquery(),
    *TABLE_GAUGES.selected_columns,
)
"""``(now, max id or NULL, pending, in_progress, dead, oldest claimable age or NULL)``, one
snapshot. ``max(id)`` is the primary key's last entry."""

_IN_WINDOW = (
    col.status == PUBLISHED,
    col.published_at > bindparam("since", type_=_TIMESTAMP),
    col.published_at <= bindparam("until", type_=_TIMESTAMP),
)
_LAG = col.published_at - col.created_at


def _lag_percentile(fraction: float) -> ColumnElement[Any]:
    percentile = func.percentile_cont(literal_column(repr(float(fraction)), Float))
    return func.extract("epoch", percentile.within_group(_LAG))


PUBLISHED_IN_WINDOW: Select[Any] = select(
    func.count(), _lag_percentile(0.5), _lag_percentile(0.99)
).where(*_IN_WINDOW)
"""``(count, lag p50, lag p99)`` of the rows published in ``(:since, :until]``; the lag is
``published_at - created_at`` in seconds (``NULL`` when none)."""

LIVE_BY_PREFIX: CompoundSelect[Any] = union_all(
    select(_prefix, PENDING, func.count()).where(col.status == PENDING).group_by(_prefix),
    select(_prefix, IN_PROGRESS, func.count()).where(col.status == IN_PROGRESS).group_by(_prefix),
    select(_prefix, PUBLISHED, func.count()).where(*_IN_WINDOW).group_by(_prefix),
)
"""``(type prefix, status, count)``: pending and in-progress rows, and rows published in
``(:since, :until]``, per prefix. Each part reads only its status's partial index."""

# -- the dashboard and selections of dead rows (outbox.storage.admin, outbox.storage.overview)
#
# A selection of dead rows is the ``_dead`` range above, optionally narrowed by ``key``
# (``:dead_key``, exact) and by error text (``:error_pattern``, an ILIKE pattern whose ``\``
# escapes ``%`` and ``_``: admin builds it from the operator's literal text). Statements
# are built once per :data:`DeadSelector` and cached. An audited change also inserts one
# ``outbox_audit`` row (``:audit_actor``, ``:audit_action``, ``:audit_operation``,
# ``:audit_selection`` as JSON text) in the same statement, counting the rows it changed;
# a batch that changed nothing writes none.


from outbox.storage.schema import audit_table  # noqa: E402

DeadSelector = tuple[bool, tuple[TypeRange, ...] | None, bool, bool]
"""``(by_id, type ranges or None, by_key, by_error)``: which selectors a statement binds."""


def _selected_dead(selector: DeadSelector) -> list[ColumnElement[bool]]:
    by_id, ranges, by_key, by_error = selector
    conditions = _dead(by_id, ranges)
    if by_key:
        # Not named "key": an UPDATE takes parameters named like a column as SET values.
        conditions.append(col.key == bindparam("dead_key", type_=Text))
    if by_error:
        pattern = bindparam("error_pattern", type_=Text)
        conditions.append(col.error.ilike(pattern, escape="\\"))
    return conditions


def _audit(changed: CTE) -> CTE:
    """Insert one audit row counting ``changed``'s rows, unless there are none."""
    count = func.count()
    return (
        insert(audit_table)
        .from_select(
            ["actor", "action", "operation", "selection", "rows_affected"],
            select(
                bindparam("audit_actor", type_=Text),
                bindparam("audit_action", type_=Text),
                bindparam("audit_operation", type_=UUID(as_uuid=True)),
                cast(bindparam("audit_selection", type_=Text), JSONB),
                count,
            )
            .select_from(changed)
            .having(count > 0),
        )
        .cte("audit")
    )


@lru_cache(maxsize=64)
def selected_dead_newest_first(selector: DeadSelector) -> Select[Any]:
    """Up to ``:limit`` selected dead rows, latest death first. Returns :data:`DEAD_COLUMNS`."""
    return (
        select(*DEAD_COLUMNS)
        .where(*_selected_dead(selector))
        .order_by(col.dead_at.desc(), col.id.desc())
        .limit(_limit())
    )


@lru_cache(maxsize=64)
def count_selected_dead(selector: DeadSelector) -> Select[Any]:
    """How many dead rows the selection names (read on ``ix_outbox_dead_at``)."""
    return select(func.count()).select_from(outbox_table).where(*_selected_dead(selector))


@lru_cache(maxsize=64)
def selected_dead_batch(selector: DeadSelector) -> Select[Any]:
    """The next ``:limit`` selected dead rows after the cursor, unlocked and unchanged (a
    dry run). Returns ``(id, dead_at)``, earliest death first."""
    return _after_cursor(col.dead_at, *_selected_dead(selector))


@lru_cache(maxsize=64)
def retry_selected_dead_batch(selector: DeadSelector, audited: bool) -> Select[Any]:
    """As :func:`retry_dead_batch`, for any selection, optionally audited (action and
    count in ``outbox_audit``, same statement). Returns ``(id, dead_at)``."""
    chosen = (
        _after_cursor(col.dead_at, *_selected_dead(selector))
        .with_for_update(skip_locked=True)
        .cte("chosen")
    )
    retried = (
        update(outbox_table)
        .where(_chosen_ids(chosen))
        .values(status=PENDING, attempts=0, next_attempt_at=CLOCK, **LEASE_ENDED)
        .returning(col.id)
        .cte("retried")
    )
    statement = select(chosen.c.id, chosen.c.dead_at).add_cte(retried)
    return statement.add_cte(_audit(retried)) if audited else statement


@lru_cache(maxsize=64)
def purge_selected_dead_batch(selector: DeadSelector, audited: bool) -> Select[Any]:
    """Delete the next ``:limit`` selected dead rows after the cursor, earliest death
    first, skipping locked rows; optionally audited. Returns ``(id, dead_at)`` of the
    deleted rows."""
    chosen = (
        _after_cursor(col.dead_at, *_selected_dead(selector))
        .with_for_update(skip_locked=True)
        .cte("chosen")
    )
    deleted = (
        delete(outbox_table)
        .where(_chosen_ids(chosen))
        .returning(col.id, col.dead_at)
        .cte("deleted")
    )
    statement = select(deleted.c.id, deleted.c.dead_at)
    return statement.add_cte(_audit(deleted)) if audited else statement


MESSAGE_COLUMNS = (
    col.id,
    col.type,
    col.key,
    col.payload,
    col.status,
    col.attempts,
    col.next_attempt_at,
    col.locked_by,
    col.locked_until,
    col.error,
    col.created_at,
    col.published_at,
    col.dead_at,
    col.dedupe_key,
)

MESSAGE_BY_ID: Select[Any] = select(*MESSAGE_COLUMNS).where(
    col.id == bindparam("id", type_=BigInteger)
)
"""One row by primary key. Returns :data:`MESSAGE_COLUMNS`."""

MESSAGE_BY_DEDUPE_KEY: Select[Any] = select(*MESSAGE_COLUMNS).where(
    col.dedupe_key == bindparam("dedupe_key", type_=Text)
)
"""The row holding ``:dedupe_key`` (``uq_outbox_dedupe_key``). Returns :data:`MESSAGE_COLUMNS`."""

_NO_TIME = cast(null(), _TIMESTAMP)


def _per_type(status: Any, *conditions: ColumnElement[bool], due: Any = _NO_TIME) -> Select[Any]:
    return (
        select(col.type, status.label("status"), func.count().label("rows"), due.label("due"))
        .where(*conditions)
        .group_by(col.type)
    )


_per_type_counts = union_all(
    _per_type(
        PENDING,
        col.status == PENDING,
        due=func.min(col.next_attempt_at).filter(col.next_attempt_at <= CLOCK),
    ),
    _per_type(IN_PROGRESS, col.status == IN_PROGRESS),
    _per_type(DEAD, col.status == DEAD),
    _per_type(PUBLISHED, *_IN_WINDOW),
).cte("per_type")

_type_prefix = case(
    (
        func.strpos(_per_type_counts.c.type, ".") > 0,
        func.split_part(_per_type_counts.c.type, ".", 1) + literal(".", Text),
    ),
    else_=_per_type_counts.c.type,
).label("prefix")

OVERVIEW_BY_PREFIX: Select[Any] = select(
    _type_prefix,
    _per_type_counts.c.status,
    cast(func.sum(_per_type_counts.c.rows), BigInteger),
    func.min(_per_type_counts.c.due),
).group_by(_type_prefix, _per_type_counts.c.status)
"""``(type prefix, status, count, earliest due time)`` per prefix: pending rows (with the
earliest ``next_attempt_at`` already due at ``:now``), in-progress and dead rows, and rows
published in ``(:since, :until]``. Each part reads only its status's partial index,
grouped by type first (in index order for the pending rows: no per-row prefix work), then
by prefix over the few types."""

LEASE_HOLDERS: Select[Any] = (
    select(col.locked_by, func.count(), func.min(col.locked_until), func.max(col.locked_until))
    .where(col.status == IN_PROGRESS)
    .group_by(col.locked_by)
    .order_by(col.locked_by)
)
"""``(worker id, rows held, earliest lease end, latest lease end)`` per lease holder
(``ix_outbox_lease``)."""

AUDIT_COLUMNS = (
    audit_table.c.id,
    audit_table.c.at,
    audit_table.c.actor,
    audit_table.c.action,
    audit_table.c.operation,
    audit_table.c.selection,
    audit_table.c.rows_affected,
)

RECENT_AUDIT: Select[Any] = select(*AUDIT_COLUMNS).order_by(audit_table.c.id.desc()).limit(_limit())
"""The latest ``:limit`` audit rows, newest first. Returns :data:`AUDIT_COLUMNS`."""

__all__ += [
    "AUDIT_COLUMNS",
    "LEASE_HOLDERS",
    "MESSAGE_BY_DEDUPE_KEY",
    "MESSAGE_BY_ID",
    "MESSAGE_COLUMNS",
    "OVERVIEW_BY_PREFIX",
    "RECENT_AUDIT",
    "DeadSelector",
    "count_selected_dead",
    "purge_selected_dead_batch",
    "retry_selected_dead_batch",
    "selected_dead_batch",
    "selected_dead_newest_first",
]
