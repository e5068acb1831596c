"""Worker-side storage: claim, acknowledge, extend, release and reap.

The only module (with ``enqueue`` and ``stats``) that builds SQL against the outbox table.

Every call takes an :data:`~outbox._db.AsyncDB`: an ``AsyncEngine`` runs the call in its own
transaction and commits before returning; an ``AsyncConnection``/``AsyncSession`` joins the
caller's transaction, which the caller must commit promptly (claimed rows stay row-locked
until then).

**Fencing.** A claim's lease is ``(id, attempts, locked_by)``: ``attempts`` grows at every
claim. Every acknowledgement applies only to rows still ``in_progress`` under that exact
lease, so a worker whose lease expired and whose row was reaped or claimed again changes
nothing; the result reports those ids as ``lost``.

**Time.** ``now=None`` uses the database clock (``now()``, the transaction start), shared
by all workers; pass a timezone-aware ``now`` to step time in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Interval,
    Text,
    bindparam,
    case,
    column,
    false,
    func,
    literal,
    literal_column,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.expression import CTE, ScalarSelect

from outbox._db import AsyncDB, Rows, fetch_all
from outbox.backoff import BackoffPolicy, ExponentialBackoff
from outbox.constants import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_REAP_LIMIT,
    MAX_CLAIM_LIMIT,
    MAX_ERROR_LENGTH,
)
from outbox.errors import InvalidArgumentError
from outbox.messages import AckResult, ClaimedMessage, ReapResult, RescheduleResult
from outbox.prefixes import PrefixArg, TypeRange, type_ranges
from outbox.schema import Status
from outbox.schema import outbox_table as t

__all__ = [
    "claim_batch",
    "claim_statement",
    "extend_lease",
    "mark_dead",
    "mark_published",
    "reap_expired_locks",
    "reap_statement",
    "release",
    "reschedule",
]

# Status constants are rendered as SQL literals, not bind parameters, so that PostgreSQL can
# match the partial indexes' predicates even under a generic (prepared) plan.
PENDING = literal_column(f"'{Status.PENDING.value}'", Text)
IN_PROGRESS = literal_column(f"'{Status.IN_PROGRESS.value}'", Text)
PUBLISHED = literal_column(f"'{Status.PUBLISHED.value}'", Text)
DEAD = literal_column(f"'{Status.DEAD.value}'", Text)

_CLAIMED_COLUMNS = (
    t.c.id,
    t.c.type,
    t.c.key,
    t.c.payload,
    t.c.attempts,
    t.c.created_at,
    t.c.next_attempt_at,
    t.c.locked_by,
    t.c.locked_until,
    t.c.error,
)

_default_backoff = ExponentialBackoff()


async def claim_batch(
    db: AsyncDB,
    *,
    limit: int,
    lock_seconds: float,
    worker_id: str,
    include_type_prefix: PrefixArg = None,
    exclude_type_prefix: PrefixArg = None,
    now: datetime | None = None,
) -> list[ClaimedMessage]:
    """Claim up to ``limit`` claimable rows, oldest first, in one statement.

    Claimable: ``pending`` and ``next_attempt_at <= now``, with a type that starts with one
    of ``include_type_prefix`` (if given) and with none of ``exclude_type_prefix``. Prefixes
    are literal text. Rows locked by a concurrent claim are skipped (``FOR UPDATE SKIP
    LOCKED``), so concurrent claimers never get the same row. Claimed rows become
    ``in_progress``, leased to ``worker_id`` until ``now + lock_seconds``, with ``attempts``
    incremented. Returned in claim order (``next_attempt_at``, then ``id``).
    """
    statement = claim_statement(
        limit=limit,
        lock_seconds=lock_seconds,
        worker_id=worker_id,
        include_type_prefix=include_type_prefix,
        exclude_type_prefix=exclude_type_prefix,
        now=now,
    )
    rows = await fetch_all(db, statement)
    claimed = [ClaimedMessage(*row) for row in rows]
    claimed.sort(key=lambda m: (m.next_attempt_at, m.id))
    return claimed


def claim_statement(
    *,
    limit: int,
    lock_seconds: float,
    worker_id: str,
    include_type_prefix: PrefixArg = None,
    exclude_type_prefix: PrefixArg = None,
    now: datetime | None = None,
) -> Update:
    """The claim as one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`` statement.

    Stage 1 (``candidates``) picks the oldest claimable ids, locking them and skipping rows
    other claimers hold; stage 2 leases those rows and counts the attempt.
    """
    _check_limit(limit)
    lease = _seconds("lock_seconds", lock_seconds, positive=True)
    _check_worker(worker_id)
    clock = _clock(now)
    ranges = type_ranges(include_type_prefix, exclude_type_prefix)
    if ranges is None:
        candidates = _oldest_claimable(limit, clock)
    else:
        candidates = _oldest_claimable_of_types(limit, clock, ranges)
    return (
        update(t)
        .where(t.c.id == candidates.c.id)
        .values(
            status=IN_PROGRESS,
            attempts=t.c.attempts + 1,
            locked_by=worker_id,
            locked_until=clock + literal(lease, Interval()),
        )
        .returning(*_CLAIMED_COLUMNS)
    )


def _oldest_claimable(limit: int, clock: ColumnElement[datetime]) -> CTE:
    """Unfiltered: walk ``ix_outbox_claimable`` in order and stop after ``limit`` rows."""
    return (
        select(t.c.id)
        .where(t.c.status == PENDING, t.c.next_attempt_at <= clock)
        .order_by(t.c.next_attempt_at, t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("candidates")
    )


def _oldest_claimable_of_types(
    limit: int, clock: ColumnElement[datetime], ranges: list[TypeRange]
) -> CTE:
    """Filtered by type: the same rows and order, without reading other types' backlogs.

    Walking ``ix_outbox_claimable`` and filtering by type would read every older row of
    the other types first (a large backlog of another domain makes each poll a scan). So:

    1. ``pending_types``: the distinct pending types inside the ranges, found by a loose
       index scan of ``ix_outbox_claimable_type`` (one index probe per type);
    2. per type, the oldest ``limit`` claimable rows, read in index order and locked with
       SKIP LOCKED (a LATERAL subquery);
    3. merged by age, keeping the oldest ``limit``. Rows locked in step 2 but not kept are
       released when the claim's transaction commits, a moment later.

    Cost grows with the number of distinct pending types in the ranges, not with the size
    of any backlog.
    """
    type_sets = [_pending_types(i, low, high) for i, (low, high) in enumerate(ranges)]
    if not type_sets:
        return select(t.c.id).where(false()).cte("candidates")
    pending_types = union_all(
        *(select(types.c.type).where(types.c.type.isnot(None)) for types in type_sets)
    ).subquery("pending_types")
    per_type = (
        select(t.c.id, t.c.next_attempt_at)
        .where(
            t.c.status == PENDING,
            t.c.type == pending_types.c.type,
            t.c.next_attempt_at <= clock,
        )
        .order_by(t.c.next_attempt_at, t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .lateral("per_type")
    )
    return (
        select(per_type.c.id)
        .select_from(pending_types.join(per_type, true()))
        .order_by(per_type.c.next_attempt_at, per_type.c.id)
        .limit(limit)
        .cte("candidates")
    )


def _pending_types(index: int, low: str | None, high: str | None) -> CTE:
    """Recursive CTE of the distinct pending types in ``[low, high)``, ascending."""

    def first_type_after(*conditions: ColumnElement[bool]) -> ScalarSelect[str]:
        upper = () if high is None else (t.c.type < high,)
        return (
            select(func.min(t.c.type))
            .where(t.c.status == PENDING, *conditions, *upper)
            .scalar_subquery()
        )

    lower = () if low is None else (t.c.type >= low,)
    types = select(first_type_after(*lower).label("type")).cte(
        f"pending_types_{index}", recursive=True
    )
    step = select(first_type_after(t.c.type > types.c.type)).where(types.c.type.isnot(None))
    return types.union_all(step)


async def mark_published(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    now: datetime | None = None,
) -> AckResult:
    """Mark delivered messages ``published`` (one statement for the whole batch). Fenced."""
    _check_worker(worker_id)
    if not messages:
        return AckResult(frozenset(), frozenset())
    lease = _lease_rows(messages)
    statement = (
        update(t)
        .where(*_fenced(lease, worker_id))
        .values(
            status=PUBLISHED,
            published_at=_clock(now),
            locked_by=None,
            locked_until=None,
            error=None,
        )
        .returning(t.c.id)
    )
    return _ack_result(messages, await fetch_all(db, statement))


async def mark_dead(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    error: str | Mapping[int, str],
) -> AckResult:
    """Give messages up now: ``dead`` with ``error`` (one text, or one per id). Fenced."""
    _check_worker(worker_id)
    if not messages:
        return AckResult(frozenset(), frozenset())
    lease = _lease_rows(messages, error=(Text, [_error_for(m, error) for m in messages]))
    statement = (
        update(t)
        .where(*_fenced(lease, worker_id))
        .values(status=DEAD, error=lease.c.error, locked_by=None, locked_until=None)
        .returning(t.c.id)
    )
    return _ack_result(messages, await fetch_all(db, statement))


async def reschedule(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    error: str | Mapping[int, str],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: BackoffPolicy = _default_backoff,
    delay: float | timedelta | Mapping[int, float | timedelta] | None = None,
    now: datetime | None = None,
) -> RescheduleResult:
    """Record a failed attempt: retry later, or ``dead`` once attempts reach ``max_attempts``.

    The retry waits ``delay`` when given (a handler's "retry after N seconds"; one value or
    one per id), else ``backoff(attempts, type)``. ``error`` is stored either way. One
    statement for the whole batch. Fenced.
    """
    _check_worker(worker_id)
    if max_attempts < 1:
        raise InvalidArgumentError("max_attempts must be >= 1")
    if not messages:
        return RescheduleResult(frozenset(), frozenset(), frozenset())
    delays = [_retry_delay(m, delay, backoff) for m in messages]
    give_up = [m.attempts >= max_attempts for m in messages]
    lease = _lease_rows(
        messages,
        error=(Text, [_error_for(m, error) for m in messages]),
        delay=(Float, delays),
        give_up=(Boolean, give_up),
    )
    statement = (
        update(t)
        .where(*_fenced(lease, worker_id))
        .values(
            status=case((lease.c.give_up, DEAD), else_=PENDING),
            next_attempt_at=_clock(now) + func.make_interval(0, 0, 0, 0, 0, 0, lease.c.delay),
            error=lease.c.error,
            locked_by=None,
            locked_until=None,
        )
        .returning(t.c.id, t.c.status)
    )
    rows = await fetch_all(db, statement)
    dead = frozenset(id_ for id_, status in rows if status == Status.DEAD)
    retried = frozenset(id_ for id_, status in rows if status == Status.PENDING)
    lost = frozenset(m.id for m in messages) - dead - retried
    return RescheduleResult(retried=retried, dead=dead, lost=lost)


async def extend_lease(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    lock_seconds: float,
    now: datetime | None = None,
) -> AckResult:
    """Heartbeat: push the lease of messages still held to ``now + lock_seconds``. Fenced.

    Ids in ``lost`` were reaped (or claimed again) already: stop working on them.
    """
    _check_worker(worker_id)
    lease_length = _seconds("lock_seconds", lock_seconds, positive=True)
    if not messages:
        return AckResult(frozenset(), frozenset())
    lease = _lease_rows(messages)
    statement = (
        update(t)
        .where(*_fenced(lease, worker_id))
        .values(locked_until=_clock(now) + literal(lease_length, Interval()))
        .returning(t.c.id)
    )
    return _ack_result(messages, await fetch_all(db, statement))


async def release(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    delay: float | timedelta | None = None,
    now: datetime | None = None,
) -> AckResult:
    """Hand claimed, unstarted messages back: ``pending``, the attempt not counted. Fenced.

    For shutdown (claimed but never started) and for transport outages (``delay`` holds the
    messages back without burning their attempts). Do not release a message whose delivery
    may have started; reschedule it instead.
    """
    _check_worker(worker_id)
    if not messages:
        return AckResult(frozenset(), frozenset())
    values: dict[str, Any] = {
        "status": PENDING,
        "attempts": t.c.attempts - 1,
        "locked_by": None,
        "locked_until": None,
    }
    if delay is not None:
        wait = _seconds("delay", delay, positive=False)
        values["next_attempt_at"] = _clock(now) + literal(wait, Interval())
    lease = _lease_rows(messages)
    statement = update(t).where(*_fenced(lease, worker_id)).values(values).returning(t.c.id)
    return _ack_result(messages, await fetch_all(db, statement))


async def reap_expired_locks(
    db: AsyncDB,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    limit: int = DEFAULT_REAP_LIMIT,
    now: datetime | None = None,
) -> ReapResult:
    """Return rows whose lease ended before ``now`` to ``pending`` (claimable at once).

    The crashed attempt stays counted, so a message that keeps killing its worker runs out:
    rows already at ``max_attempts`` go ``dead`` instead. At most ``limit`` rows per call
    (call again while it returns a full batch). Safe to run from every worker at once.
    """
    statement = reap_statement(max_attempts=max_attempts, limit=limit, now=now)
    rows = await fetch_all(db, statement)
    return ReapResult(
        requeued=frozenset(i for i, s in rows if s == Status.PENDING),
        dead=frozenset(i for i, s in rows if s == Status.DEAD),
    )


def reap_statement(
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    limit: int = DEFAULT_REAP_LIMIT,
    now: datetime | None = None,
) -> Update:
    """The reap as one statement: expired leases (oldest first, skip locked) -> pending/dead."""
    _check_limit(limit)
    if max_attempts < 1:
        raise InvalidArgumentError("max_attempts must be >= 1")
    clock = _clock(now)
    expired = (
        select(t.c.id)
        .where(t.c.status == IN_PROGRESS, t.c.locked_until < clock)
        .order_by(t.c.locked_until)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("expired")
    )
    give_up = t.c.attempts >= max_attempts
    return (
        update(t)
        .where(t.c.id == expired.c.id)
        .values(
            status=case((give_up, DEAD), else_=PENDING),
            next_attempt_at=clock,
            error=literal("lease expired (held by ")
            + func.coalesce(t.c.locked_by, literal("?"))
            + literal(") after attempt ")
            + func.cast(t.c.attempts, Text),
            locked_by=None,
            locked_until=None,
        )
        .returning(t.c.id, t.c.status)
    )


# -- helpers -------------------------------------------------------------------------------


def _clock(now: datetime | None) -> ColumnElement[datetime]:
    if now is None:
        return func.now()
    if now.utcoffset() is None:
        raise InvalidArgumentError("now must be a timezone-aware datetime")
    return literal(now, DateTime(timezone=True))


def _lease_rows(messages: Sequence[ClaimedMessage], **extra: tuple[Any, list[Any]]) -> Any:
    """``unnest(ids, attempts, ...) AS lease(id, attempts, ...)``: one row per message."""
    arrays = [
        bindparam("lease_ids", [m.id for m in messages], type_=ARRAY(BigInteger)),
        bindparam("lease_attempts", [m.attempts for m in messages], type_=ARRAY(Integer)),
    ]
    columns = [column("id", BigInteger), column("attempts", Integer)]
    for name, (sql_type, values) in extra.items():
        arrays.append(bindparam(f"lease_{name}", values, type_=ARRAY(sql_type)))
        columns.append(column(name, sql_type))
    return func.unnest(*arrays).table_valued(*columns).render_derived(name="lease")


def _fenced(lease: Any, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    return (
        t.c.id == lease.c.id,
        t.c.attempts == lease.c.attempts,
        t.c.status == IN_PROGRESS,
        t.c.locked_by == worker_id,
    )


def _ack_result(messages: Sequence[ClaimedMessage], rows: Rows) -> AckResult:
    applied = frozenset(row[0] for row in rows)
    return AckResult(applied=applied, lost=frozenset(m.id for m in messages) - applied)


def _error_for(message: ClaimedMessage, error: str | Mapping[int, str]) -> str:
    text = error if isinstance(error, str) else error.get(message.id, "")
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    return text.replace("\x00", "")


def _retry_delay(
    message: ClaimedMessage,
    delay: float | timedelta | Mapping[int, float | timedelta] | None,
    backoff: BackoffPolicy,
) -> float:
    chosen = delay.get(message.id) if isinstance(delay, Mapping) else delay
    if chosen is None:
        chosen = backoff(message.attempts, message.type)
    return _seconds("delay", chosen, positive=False).total_seconds()


def _seconds(name: str, value: float | timedelta, *, positive: bool) -> timedelta:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise InvalidArgumentError(f"{name} must be finite and {bound}, got {value!r}")
    return timedelta(seconds=seconds)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_CLAIM_LIMIT}")


def _check_worker(worker_id: str) -> None:
    if not isinstance(worker_id, str) or not worker_id:
        raise InvalidArgumentError("worker_id must be a non-empty string")
