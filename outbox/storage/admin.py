"""Operator operations on the outbox table: inspect, retry and purge dead rows, live samples.

What the ``outbox`` CLI runs, usable from code too. Every call takes an
:data:`~outbox.storage.execution.AsyncDB`.
Batched operations (:func:`retry_dead`, :func:`purge`) run one
short statement per batch; give them an engine, a pool or a connection outside a
transaction, so that each batch commits on its own and no lock is held for long.

**Time.** ``now=None`` uses the database clock, read once when the operation starts (the
reference for every age and cutoff of that operation); pass a timezone-aware ``now`` to step
time in tests. A dead row's age is how long ago it died (``dead_at``), a published row's
how long ago it was published (``published_at``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from outbox.primitives.errors import InvalidArgumentError
from outbox.primitives.prefixes import TypeRange, type_ranges
from outbox.storage import key_order
from outbox.storage import statements as sql
from outbox.storage.audit import Audit
from outbox.storage.claims import checked_now
from outbox.storage.execution import AsyncDB, execute_alone, fetch_all
from outbox.storage.schema import OUTBOX_TABLE_NAME, Status

__all__ = [
    "Audit",
    "DeadFilter",
    "DeadMessage",
    "LiveSample",
    "MessageDetail",
    "PrefixSample",
    "PurgeTarget",
    "RetryResult",
    "count_dead",
    "database_now",
    "find_message",
    "list_dead",
    "live_sample",
    "migrated_revisions",
    "outbox_table_exists",
    "purge",
    "purge_dead",
    "retry_dead",
]

log = logging.getLogger("outbox.admin")

MAX_BATCH_SIZE = 100_000
"""Largest batch (rows per statement) :func:`retry_dead` and :func:`purge` take."""

ANALYZE_AFTER = 1000
"""Rows a :func:`retry_dead` call must put back to ``pending`` before it runs ``ANALYZE``."""

BatchCallback = Callable[[int, int], None]
"""Called after each batch with ``(rows in this batch, rows so far)``."""


async def database_now(db: AsyncDB, *, now: datetime | None = None) -> datetime:
    """``now`` if given (it must be timezone-aware), else the database clock."""
    checked_now(now)
    rows = await fetch_all(db, sql.DATABASE_CLOCK, {"now": now})
    clock: datetime = rows[0][0]
    return clock


async def outbox_table_exists(db: AsyncDB) -> bool:
    """Whether the ``outbox`` table exists on the connection's search path."""
    rows = await fetch_all(db, sql.TABLE_EXISTS, {"table_name": OUTBOX_TABLE_NAME})
    return bool(rows[0][0])


async def migrated_revisions(db: AsyncDB) -> list[str]:
    """The Alembic revisions the database is at (``outbox_alembic_version``), sorted; empty
    when the outbox was never migrated standalone."""
    from outbox.storage.migrate import VERSION_TABLE  # here: importing Alembic takes a while

    exists = await fetch_all(db, sql.TABLE_EXISTS, {"table_name": VERSION_TABLE})
    if not exists[0][0]:
        return []
    return [row[0] for row in await fetch_all(db, sql.migration_revisions(VERSION_TABLE))]


# -- dead rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadFilter:
    """Which dead rows an operation selects; the fields given combine with AND.

    ``ids``: only these rows. ``type_prefix``: types starting with it, literally (``_`` and
    ``%`` match only themselves). ``key``: this ordering key exactly. ``error_contains``:
    the last error contains this text, literally and ignoring case. ``older_than`` /
    ``newer_than``: died (``dead_at``) before / after ``now`` minus that much. An empty
    filter selects every dead row.
    """

    ids: tuple[int, ...] | None = None
    type_prefix: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    key: str | None = None
    error_contains: str | None = None

    @property
    def is_empty(self) -> bool:
        """Whether the filter selects every dead row."""
        return self == DeadFilter()

    def describe(self) -> dict[str, Any]:
        """The selectors given, as JSON-ready values (what the audit trail records)."""
        described: dict[str, Any] = {}
        if self.ids is not None:
            described["ids"] = list(self.ids)
        for name in ("type_prefix", "key", "error_contains"):
            if getattr(self, name) is not None:
                described[name] = getattr(self, name)
        for name in ("older_than", "newer_than"):
            age: timedelta | None = getattr(self, name)
            if age is not None:
                described[f"{name}_seconds"] = age.total_seconds()
        return described

    def _ranges(self) -> tuple[TypeRange, ...] | None:
        ranges = type_ranges(self.type_prefix, None)
        return None if ranges is None else tuple(ranges)

    def _selector(self) -> sql.DeadSelector:
        return (
            self.ids is not None,
            self._ranges(),
            self.key is not None,
            self.error_contains is not None,
        )

    def _params(self, now: datetime) -> dict[str, Any]:
        for name, age in (("older_than", self.older_than), ("newer_than", self.newer_than)):
            if age is not None and age < timedelta(0):
                raise InvalidArgumentError(f"{name} must not be negative, got {age}")
        if self.ids is not None and any(isinstance(i, bool) or i < 1 for i in self.ids):
            raise InvalidArgumentError("ids must be positive integers")
        for name in ("key", "error_contains"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or "\x00" in value):
                raise InvalidArgumentError(f"{name} must be text without NUL")
        if self.error_contains == "":
            raise InvalidArgumentError("error_contains must not be empty")
        return {
            "dead_key": self.key,
            "error_pattern": (
                None if self.error_contains is None else _contains(self.error_contains)
            ),
            "ids": None if self.ids is None else list(self.ids),
            "died_before": None if self.older_than is None else now - self.older_than,
            "died_after": None if self.newer_than is None else now - self.newer_than,
        }


@dataclass(frozen=True)
class DeadMessage:
    """A dead row as an operator sees it (``error``: the last reason, in full)."""

    id: int
    type: str
    key: str | None
    attempts: int
    created_at: datetime
    dead_at: datetime
    error: str | None


async def list_dead(
    db: AsyncDB, selection: DeadFilter, *, limit: int = 50, now: datetime | None = None
) -> list[DeadMessage]:
    """Up to ``limit`` selected dead rows, latest death first (``dead_at``, then ``id``,
    descending). Read-only."""
    _check_batch("limit", limit)
    reference = await database_now(db, now=now)
    statement = sql.selected_dead_newest_first(selection._selector())
    rows = await fetch_all(db, statement, {**selection._params(reference), "limit": limit})
    return [DeadMessage(*row) for row in rows]


async def count_dead(db: AsyncDB, selection: DeadFilter, *, now: datetime | None = None) -> int:
    """How many dead rows ``selection`` names now (what a confirmation shows). Read-only."""
    reference = await database_now(db, now=now)
    statement = sql.count_selected_dead(selection._selector())
    return int((await fetch_all(db, statement, selection._params(reference)))[0][0])


def _contains(text: str) -> str:
    """An ILIKE pattern (escape ``\\``) matching ``text`` literally anywhere."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class RetryResult:
    """What :func:`retry_dead` did (or, ``dry_run``, would do).

    ``retried``: how many rows went back to ``pending``. ``not_dead``: the named ids (of
    ``DeadFilter.ids``) left alone because they are not dead, mapped to their status
    (``None``: no such row). Named dead rows that the other selectors exclude are in
    neither.
    """

    retried: int
    not_dead: dict[int, Status | None] = field(default_factory=dict)


async def retry_dead(
    db: AsyncDB,
    selection: DeadFilter,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    on_batch: BatchCallback | None = None,
    analyze_after: int | None = ANALYZE_AFTER,
    audit: Audit | None = None,
) -> RetryResult:
    """Selected dead rows -> ``pending``, due now, ``attempts = 0``, lease cleared; ``error``
    keeps the last reason. An empty ``selection`` retries every dead row.

    Runs in batches of ``batch_size``, each its own statement, walking a keyset cursor on
    ``(dead_at, id)`` that only moves forward, so a row is retried at most once per call
    even if it dies again meanwhile. Only rows that died before the call started are
    selected, so the call ends however fast new rows die. Rows another transaction holds
    are skipped. ``dry_run`` walks the same rows without locking or changing them.

    When at least ``analyze_after`` rows went back to ``pending`` (``None``: never) and
    ``db`` is not the caller's transaction, it runs ``ANALYZE outbox``: planner statistics
    that have not seen such a backlog can make cached claim plans of the workers read it
    (another domain's claims included) until autovacuum analyzes the table. ``ANALYZE``
    samples the table and blocks neither reads nor writes; a role that does not own the
    table gets a warning, not an error.

    ``audit``: each batch also writes an ``outbox_audit`` row (action ``retry``) in the same
    statement (see :mod:`outbox.storage.audit`); a dry run writes none.
    """
    _check_batch("batch_size", batch_size)
    reference = await database_now(db, now=now)
    params = selection._params(reference)
    if params["died_before"] is None or params["died_before"] > reference:
        params["died_before"] = reference
    selector = selection._selector()
    if dry_run:
        statement = sql.selected_dead_batch(selector)
    else:
        statement = sql.retry_selected_dead_batch(selector, audit is not None)
        if audit is not None:
            params |= audit.params("retry", selection.describe())
    named = frozenset(selection.ids or ())
    retried_named: set[int] = set()

    def retried(rows: Sequence[Any]) -> None:
        retried_named.update(id_ for id_, _ in rows if id_ in named)

    params |= {"now": reference}
    total = await _walk(db, statement, params, batch_size, on_batch, retried)
    if not dry_run and analyze_after is not None and total >= analyze_after:
        await _refresh_statistics(db)
    not_dead = await _not_dead(db, sorted(named - retried_named))
    return RetryResult(retried=total, not_dead=not_dead)


async def _refresh_statistics(db: AsyncDB) -> None:
    """``ANALYZE outbox`` in a transaction of its own, waiting at most 5 s for its lock (a
    concurrent index build holds it); a failure is logged, never raised: the retry it
    follows is done and committed."""
    try:
        await execute_alone(db, "SET LOCAL lock_timeout = '5s'", f"ANALYZE {OUTBOX_TABLE_NAME}")
    except Exception as exc:
        log.warning("ANALYZE %s after a large retry failed: %s", OUTBOX_TABLE_NAME, exc)


async def _not_dead(db: AsyncDB, ids: Sequence[int]) -> dict[int, Status | None]:
    """Those of ``ids`` that are not dead, with their status (``None``: no such row)."""
    if not ids:
        return {}
    found = {
        id_: Status(status)
        for id_, status in await fetch_all(db, sql.STATUS_OF_IDS, {"ids": list(ids)})
    }
    return {i: found.get(i) for i in ids if found.get(i) != Status.DEAD}


# -- purge ---------------------------------------------------------------------------------


class PurgeTarget(StrEnum):
    """Rows :func:`purge` deletes: ``published`` (aged by ``published_at``) or ``dead`` (aged
    by ``dead_at``)."""

    PUBLISHED = "published"
    DEAD = "dead"


async def purge(
    db: AsyncDB,
    target: PurgeTarget,
    *,
    older_than: timedelta,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    on_batch: BatchCallback | None = None,
) -> int:
    """Delete ``target`` rows older than ``older_than``; return how many (``dry_run``: how
    many would be, deleting nothing).

    The cutoff (``now - older_than``) is fixed when the call starts. Each batch of
    ``batch_size`` oldest rows is one statement (its own transaction on an engine or pool)
    that skips rows other transactions hold, so no lock is held long. Batches walk a keyset
    cursor on ``(age, id)``, so none reads what an earlier one deleted (an old snapshot
    elsewhere keeps those index entries alive); the call stops after a batch deletes fewer
    than ``batch_size``.
    """
    _check_batch("batch_size", batch_size)
    if older_than < timedelta(0):
        raise InvalidArgumentError(f"older_than must not be negative, got {older_than}")
    cutoff = await database_now(db, now=now) - older_than
    published = PurgeTarget(target) is PurgeTarget.PUBLISHED
    if dry_run:
        count = sql.COUNT_PUBLISHED_BEFORE if published else sql.COUNT_DEAD_BEFORE
        return int((await fetch_all(db, count, {"cutoff": cutoff}))[0][0])
    statement = sql.PURGE_PUBLISHED if published else sql.PURGE_DEAD
    return await _walk(db, statement, {"cutoff": cutoff}, batch_size, on_batch)


async def purge_dead(
    db: AsyncDB,
    selection: DeadFilter,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    on_batch: BatchCallback | None = None,
    audit: Audit | None = None,
) -> int:
    """Delete the selected dead rows; return how many (``dry_run``: how many would be,
    deleting nothing). An empty ``selection`` deletes every dead row.

    Batches as :func:`retry_dead`: each one statement on a keyset cursor over ``(dead_at,
    id)``, skipping rows other transactions hold, and only rows that died before the call
    started. ``audit``: each batch also writes an ``outbox_audit`` row (action ``purge``)
    in the same statement.
    """
    _check_batch("batch_size", batch_size)
    reference = await database_now(db, now=now)
    if dry_run:
        return await count_dead(db, selection, now=reference)
    params = selection._params(reference)
    if params["died_before"] is None or params["died_before"] > reference:
        params["died_before"] = reference
    if audit is not None:
        params |= audit.params("purge", selection.describe())
    statement = sql.purge_selected_dead_batch(selection._selector(), audit is not None)
    return await _walk(db, statement, params, batch_size, on_batch)


# -- one message ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageDetail:
    """Every column of one row as an operator sees it (``payload`` as decoded JSON)."""

    id: int
    type: str
    key: str | None
    payload: Any
    status: Status
    attempts: int
    next_attempt_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    error: str | None
    created_at: datetime
    published_at: datetime | None
    dead_at: datetime | None
    dedupe_key: str | None


async def find_message(
    db: AsyncDB, *, id: int | None = None, dedupe_key: str | None = None
) -> MessageDetail | None:
    """The row with this ``id`` or, else, this ``dedupe_key`` (give exactly one); ``None``
    when there is none. One primary-key or unique-index probe; read-only."""
    if (id is None) == (dedupe_key is None):
        raise InvalidArgumentError("give exactly one of id and dedupe_key")
    if id is not None:
        if isinstance(id, bool) or not 1 <= id < 2**63:
            raise InvalidArgumentError("id must be a positive 64-bit integer")
        rows = await fetch_all(db, sql.MESSAGE_BY_ID, {"id": id})
    else:
        rows = await fetch_all(db, sql.MESSAGE_BY_DEDUPE_KEY, {"dedupe_key": dedupe_key})
    if not rows:
        return None
    values = list(rows[0])
    if isinstance(values[3], str):  # a handle without the JSON codecs
        values[3] = json.loads(values[3])
    values[4] = Status(values[4])
    return MessageDetail(*values)


async def _walk(
    db: AsyncDB,
    statement: Any,
    params: dict[str, Any],
    batch_size: int,
    on_batch: BatchCallback | None,
    each: Callable[[Sequence[Any]], None] | None = None,
) -> int:
    """Run a batched ``statement`` (it returns ``(id, age)`` per row) batch after batch,
    moving the ``(cursor_at, cursor_id)`` keyset to the greatest row of each, until a batch
    returns fewer than ``batch_size`` rows; return how many rows in all."""
    total = 0
    cursor: tuple[datetime | None, int | None] = (None, None)
    while True:
        batch = {**params, "limit": batch_size, "cursor_at": cursor[0], "cursor_id": cursor[1]}
        rows = await fetch_all(db, statement, batch)
        total += len(rows)
        if rows:
            cursor = max((age, id_) for id_, age in rows)
            if each is not None:
                each(rows)
            if on_batch is not None:
                on_batch(len(rows), total)
        if len(rows) < batch_size:
            return total


# -- live samples (``outbox top``) ---------------------------------------------------------


@dataclass(frozen=True)
class PrefixSample:
    """One type prefix (see :func:`~outbox.storage.stats.type_prefix_of`) in a sample."""

    pending: int = 0
    in_progress: int = 0
    published_per_second: float | None = None


@dataclass(frozen=True)
class LiveSample:
    """One reading of the table, with rates against the previous reading.

    Rates (``*_per_second``) and lags are ``None`` on the first sample. ``enqueued`` comes
    from the growth of ``max(id)``, so ids spent by rolled-back or de-duplicated inserts
    count too; ``dead_per_second`` is the net change of the dead count (negative while dead
    rows are retried or purged). Lags are ``published_at - created_at`` percentiles, in
    seconds, over the rows published since the previous sample.
    """

    taken_at: datetime
    max_id: int
    pending: int
    in_progress: int
    dead: int
    oldest_claimable_age: float | None
    enqueued_per_second: float | None = None
    published_per_second: float | None = None
    dead_per_second: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    keys_in_flight: int = 0
    keys_held: int = 0
    by_prefix: dict[str, PrefixSample] = field(default_factory=dict)


async def live_sample(
    db: AsyncDB, previous: LiveSample | None = None, *, now: datetime | None = None
) -> LiveSample:
    """Read the table for ``outbox top``, never its published history.

    Counts come from the partial indexes, ``max(id)`` from the primary key, and the
    published rate and lags from the rows published since ``previous`` was taken (read on
    ``ix_outbox_published_at``), and the ordered keys in flight and held. Four statements.
    """
    checked_now(now)
    taken_at, max_id, pending, in_progress, dead, age = (
        await fetch_all(db, sql.LIVE_TOTALS, {"now": now})
    )[0]
    since = taken_at if previous is None else previous.taken_at
    window = {"since": since, "until": taken_at}
    published, p50, p99 = (await fetch_all(db, sql.PUBLISHED_IN_WINDOW, window))[0]
    counts: dict[str, dict[str, int]] = {}
    for prefix, status, count in await fetch_all(db, sql.LIVE_BY_PREFIX, window):
        counts.setdefault(prefix, {})[status] = count
    keys_in_flight, keys_held = (await fetch_all(db, key_order.KEY_COUNTS))[0]
    seconds = (taken_at - since).total_seconds()

    def rate(delta: float) -> float | None:
        return delta / seconds if previous is not None and seconds > 0 else None

    return LiveSample(
        taken_at=taken_at,
        max_id=max_id or 0,
        pending=pending,
        in_progress=in_progress,
        dead=dead,
        oldest_claimable_age=None if age is None else max(0.0, float(age)),
        enqueued_per_second=rate(max(0, (max_id or 0) - (previous.max_id if previous else 0))),
        published_per_second=rate(published),
        dead_per_second=rate(dead - (previous.dead if previous else 0)),
        lag_p50=None if p50 is None else float(p50),
        lag_p99=None if p99 is None else float(p99),
        keys_in_flight=keys_in_flight,
        keys_held=keys_held,
        by_prefix={
            prefix: PrefixSample(
                pending=c.get(Status.PENDING, 0),
                in_progress=c.get(Status.IN_PROGRESS, 0),
                published_per_second=rate(c.get(Status.PUBLISHED, 0)),
            )
            for prefix, c in sorted(counts.items())
        },
    )


# -- checks --------------------------------------------------------------------------------


def _check_batch(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise InvalidArgumentError(f"{name} must be an integer from 1 to {MAX_BATCH_SIZE}")
