"""Worker-side storage: claim, acknowledge, extend, release and reap.

Every call takes an :data:`~outbox.storage.execution.AsyncDB`:
an ``AsyncEngine`` runs the call in its own
transaction and commits before returning; an ``AsyncConnection``/``AsyncSession`` joins the
caller's transaction, which the caller must commit promptly (claimed rows stay row-locked
until then). Each call is one statement (one round trip), whatever the batch size.

**Fencing.** Every claim gives each row a fresh random ``lease_token``. Every
acknowledgement applies only to rows still ``in_progress`` under that token and the same
``worker_id``, so a worker whose lease expired and whose row was reaped or claimed again
(even by itself) changes nothing; the result reports those ids as ``lost``. A lease that
expired but was neither reaped nor claimed again is still honoured.

**Time.** ``now=None`` uses the database clock (``statement_timestamp()``), shared by all
workers; pass a timezone-aware ``now`` to step time in tests.

**Cancellation.** A call cancelled mid-flight may or may not have taken effect, which is
safe by design: a claim whose result was lost is reaped when its lease ends, and an
acknowledgement that did not apply means the message is delivered again (at least once).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CompoundSelect, Executable

from outbox.primitives.backoff import BackoffPolicy, ExponentialBackoff
from outbox.primitives.constants import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_REAP_LIMIT,
    FILTERED_CLAIM_POOL_FACTOR,
    FILTERED_CLAIM_WALK_FACTOR,
    MAX_CLAIM_LIMIT,
    MAX_DELAY_SECONDS,
    MAX_ERROR_LENGTH,
)
from outbox.primitives.errors import InvalidArgumentError, error_text
from outbox.primitives.logs import log_event
from outbox.primitives.messages import AckResult, ClaimedMessage, ReapResult, RescheduleResult
from outbox.primitives.prefixes import PrefixArg, type_bounds, type_ranges
from outbox.storage import key_order
from outbox.storage import statements as sql
from outbox.storage.execution import AsyncDB, Rows, fetch_all
from outbox.storage.frontier import ClaimFrontier
from outbox.storage.schema import Status

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
    "storable_error",
    "tidy_keys",
]

_default_backoff = ExponentialBackoff()

log = logging.getLogger("outbox.storage")


async def claim_batch(
    db: AsyncDB,
    *,
    limit: int,
    lock_seconds: float,
    worker_id: str,
    include_type_prefix: PrefixArg = None,
    exclude_type_prefix: PrefixArg = None,
    ordered: bool = False,
    after_key: str = "",
    hold_keys: bool = False,
    frontier: ClaimFrontier | None = None,
    now: datetime | None = None,
) -> list[ClaimedMessage]:
    """Claim up to ``limit`` claimable rows, oldest first, in one statement.

    ``frontier``: a worker's :class:`~outbox.storage.frontier.ClaimFrontier` (the same one
    for each of its claims): the claim's walk starts where the previous one found the oldest
    claimable row, so it never reads the index entries that rows claimed since the last
    vacuum leave behind (see :mod:`outbox.storage.frontier` for the one case it delays).
    Without one, every claim walks from the oldest entry.

    ``ordered``: keep each key's order (:mod:`outbox.storage.key_order`): a keyed row is
    claimed only with its key's lease and in its key's order, and gets its position
    (``seq``); the batch is returned in position order, rows without a key last. Every
    worker that claims a key's rows must claim them ordered. When the oldest claimable rows
    all belong to keys that are leased or held, the claim finds other keys by scanning the
    keys from ``after_key`` on (wrapping around): pass the largest key of your previous
    batch, so that successive claims take turns over the keys.

    Claimable: ``pending`` and ``next_attempt_at <= now``, with a type that starts with one
    of ``include_type_prefix`` (if given) and with none of ``exclude_type_prefix``. Prefixes
    are literal text (``_`` and ``%`` match only themselves). Rows locked by a concurrent
    claim are skipped (``FOR UPDATE SKIP LOCKED``), so concurrent claimers never get the
    same row. Claimed rows become ``in_progress``, leased to ``worker_id`` until
    ``now + lock_seconds``, with ``attempts`` incremented. Returned oldest first
    (``next_attempt_at``, then ``id``); ordered, in position order.

    A row whose payload cannot be decoded (written by another producer, or holding what
    Python's JSON reader refuses, such as an integer of more than 4,300 digits) is not
    returned: it is marked ``dead`` at once, its error naming the decoding failure, and the
    rest of the batch is returned as usual. With ``hold_keys`` (see :func:`mark_dead`) its
    key is held, and the rows of its key after it are handed back instead of returned.
    """
    since = frontier.next_start() if frontier is not None else None
    statement, params = claim_statement(
        limit=limit,
        lock_seconds=lock_seconds,
        worker_id=worker_id,
        include_type_prefix=include_type_prefix,
        exclude_type_prefix=exclude_type_prefix,
        ordered=ordered,
        after_key=after_key,
        since=since,
        lookback=frontier.lookback_seconds if frontier is not None else 0.0,
        now=now,
    )
    claimed: list[ClaimedMessage] = []
    undecodable: dict[int, str] = {}
    rejected: list[ClaimedMessage] = []
    reported: datetime | None = None
    for *row, row_frontier in await fetch_all(db, statement, params):
        if row[0] is None:  # the frontier's own row (statements.with_frontier)
            reported = row_frontier
            continue
        id_, type_, key, text, *rest = row  # the payload as JSON text
        try:
            claimed.append(ClaimedMessage(id_, type_, key, json.loads(text), *rest))
        except (ValueError, RecursionError) as exc:
            undecodable[id_] = f"undecodable payload: {error_text(exc)}"
            rejected.append(ClaimedMessage(*row))
    if frontier is not None:
        frontier.moved(since, reported)
    if rejected:
        await mark_dead(db, rejected, worker_id=worker_id, error=undecodable, hold_keys=hold_keys)
        if hold_keys:
            claimed = await _hand_back_behind(db, claimed, rejected, worker_id)
        for message in rejected:
            log_event(
                log,
                logging.ERROR,
                "message.dead",
                id=message.id,
                type=message.type,
                attempt=message.attempts,
                error=undecodable[message.id],
            )
    if ordered:
        claimed.sort(key=lambda m: (m.seq is None, m.seq or 0, m.id))
    else:
        claimed.sort(key=lambda m: (m.next_attempt_at, m.id))
    return claimed


async def _hand_back_behind(
    db: AsyncDB,
    claimed: list[ClaimedMessage],
    dead: list[ClaimedMessage],
    worker_id: str,
) -> list[ClaimedMessage]:
    """``claimed`` without the rows of a held key after its dead head, which are released."""
    heads: dict[str, int] = {}
    for message in dead:
        if message.key is not None and message.seq is not None:
            heads[message.key] = min(heads.get(message.key, message.seq), message.seq)
    behind = [m for m in claimed if m.key in heads and m.seq is not None and m.seq > heads[m.key]]
    if behind:
        await release(db, behind, worker_id=worker_id)
    return [m for m in claimed if m not in behind]


def claim_statement(
    *,
    limit: int,
    lock_seconds: float,
    worker_id: str,
    include_type_prefix: PrefixArg = None,
    exclude_type_prefix: PrefixArg = None,
    ordered: bool = False,
    after_key: str = "",
    since: datetime | None = None,
    lookback: float = 0.0,
    now: datetime | None = None,
) -> tuple[CompoundSelect[Any], Mapping[str, object]]:
    """The statement :func:`claim_batch` runs and its parameters (for EXPLAIN): the walk
    starts at ``since`` (``None``: the oldest entry); ``lookback`` seconds as in
    :func:`~outbox.storage.statements.with_frontier`."""
    _check_limit(limit)
    _check_worker(worker_id)
    ranges = type_ranges(include_type_prefix, exclude_type_prefix)
    params: dict[str, object] = {
        "limit": limit,
        "worker_id": worker_id,
        "lease": _seconds("lock_seconds", lock_seconds, positive=True),
        "now": checked_now(now),
        "since": checked_now(since),
        "lookback": _seconds("lookback", lookback, positive=False),
    }
    filtered = ranges is not None
    if filtered or ordered:
        params["walk"] = limit * FILTERED_CLAIM_WALK_FACTOR
    if ranges is not None:
        params["type_lows"], params["type_highs"] = type_bounds(ranges)
        params["pool"] = limit * FILTERED_CLAIM_POOL_FACTOR
    if ordered:
        if not isinstance(after_key, str) or "\x00" in after_key:
            raise InvalidArgumentError("after_key must be text without NUL")
        params["after_key"] = after_key
        return key_order.ordered_claim(filtered), params
    return sql.claim(filtered), params


async def mark_published(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    now: datetime | None = None,
) -> AckResult:
    """Mark delivered messages ``published`` (one statement for the whole batch). Fenced."""
    return await _acknowledge(db, key_order.MARK_PUBLISHED, messages, worker_id, now)


async def mark_dead(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    error: str | Mapping[int, str],
    hold_keys: bool = False,
) -> AckResult:
    """Give messages up now: ``dead`` with ``error`` (one text, or one per id). Fenced.

    ``hold_keys``: a key whose message went dead waits behind it (ordered claims skip it)
    until that message is retried or purged; else the key moves on.
    """
    errors = [_error_for(m, error) for m in messages]
    return await _acknowledge(
        db,
        key_order.MARK_DEAD,
        messages,
        worker_id,
        None,
        lease_error=errors,
        hold_dead=hold_keys,
    )


async def reschedule(
    db: AsyncDB,
    messages: Sequence[ClaimedMessage],
    *,
    worker_id: str,
    error: str | Mapping[int, str],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: BackoffPolicy = _default_backoff,
    delay: float | timedelta | Mapping[int, float | timedelta] | None = None,
    hold_keys: bool = False,
    now: datetime | None = None,
) -> RescheduleResult:
    """Record a failed attempt: retry later, or ``dead`` once attempts reach ``max_attempts``.

    The retry waits ``delay`` when given (a handler's "retry after N seconds"; one value or
    one per id), else ``backoff(attempts, type)``. ``error`` (one text, or one per id) is
    stored either way. One statement for the whole batch. Fenced. ``hold_keys``: as for
    :func:`mark_dead`, for the messages that run out of attempts.
    """
    _check_max_attempts(max_attempts)
    rows = await _run_fenced(
        db,
        key_order.RESCHEDULE,
        messages,
        worker_id,
        now,
        lease_error=[_error_for(m, error) for m in messages],
        lease_delay=[_retry_delay(m, delay, backoff) for m in messages],
        max_attempts=max_attempts,
        hold_dead=hold_keys,
    )
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
    """Heartbeat: extend the lease of messages still held to ``now + lock_seconds``. Fenced.

    Never shortens a lease.

    Ids in ``lost`` were reaped (or claimed again) already: stop working on them.
    """
    lease = _seconds("lock_seconds", lock_seconds, positive=True)
    return await _acknowledge(db, key_order.EXTEND_LEASE, messages, worker_id, now, lease=lease)


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
    messages back without burning their attempts). The messages are due at ``now`` (plus
    ``delay``), never at their old time, which would put them behind the workers' claim
    frontiers. Do not release a message whose delivery may have started; reschedule it
    instead.
    """
    hold = None if delay is None else _seconds("delay", delay, positive=False)
    return await _acknowledge(db, key_order.RELEASE, messages, worker_id, now, hold=hold)


async def reap_expired_locks(
    db: AsyncDB,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    limit: int = DEFAULT_REAP_LIMIT,
    hold_keys: bool = False,
    now: datetime | None = None,
) -> ReapResult:
    """Return rows whose lease ended before ``now`` to ``pending`` (claimable at once).

    The crashed attempt stays counted, so a message that keeps killing its worker runs out:
    rows already at ``max_attempts`` go ``dead`` instead, with the lease holder in ``error``.
    At most ``limit`` rows per call (call again while it returns a full batch). Safe to run
    from every worker at once. A key whose reaped row goes ``dead`` waits behind it with
    ``hold_keys`` (as for :func:`mark_dead`).
    """
    params = {**_reap_params(max_attempts, limit, now), "hold_dead": hold_keys}
    rows = await fetch_all(db, key_order.REAP, params)
    return ReapResult(
        requeued=frozenset(i for i, s in rows if s == Status.PENDING),
        dead=frozenset(i for i, s in rows if s == Status.DEAD),
    )


def reap_statement(
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    limit: int = DEFAULT_REAP_LIMIT,
    now: datetime | None = None,
) -> tuple[Executable, Mapping[str, object]]:
    """The statement :func:`reap_expired_locks` runs and its parameters (for EXPLAIN)."""
    return key_order.REAP, _reap_params(max_attempts, limit, now)


async def tidy_keys(
    db: AsyncDB,
    *,
    idle_seconds: float,
    limit: int = DEFAULT_REAP_LIMIT,
    now: datetime | None = None,
) -> int:
    """Keys' housekeeping; returns how many rows it deleted.

    Deletes key leases taken more than ``idle_seconds`` ago that are superseded or are
    their key's only one (a lease holds no position, so nothing is lost; see
    :data:`~outbox.storage.key_order.PRUNE_LEASES`), and the rows of ``outbox_keys`` that
    hold no key; ``limit`` per statement, as many statements as it takes.
    """
    _check_limit(limit)
    params = {
        "idle": _seconds("idle_seconds", idle_seconds, positive=True),
        "limit": limit,
        "now": checked_now(now),
    }
    done = 0
    for statement in (key_order.PRUNE_LEASES, key_order.DELETE_FREE_KEYS):
        while True:  # a full statement: there may be more
            changed = len(await fetch_all(db, statement, params))
            done += changed
            if changed < limit:
                break
    return done


# -- helpers -------------------------------------------------------------------------------


def _reap_params(max_attempts: int, limit: int, now: datetime | None) -> dict[str, Any]:
    _check_limit(limit)
    _check_max_attempts(max_attempts)
    return {"max_attempts": max_attempts, "limit": limit, "now": checked_now(now)}


async def _run_fenced(
    db: AsyncDB,
    statement: Executable,
    messages: Sequence[ClaimedMessage],
    worker_id: str,
    now: datetime | None,
    **values: Any,
) -> Rows:
    """Run an acknowledgement on the leases of ``messages`` (nothing to do: no round trip)."""
    _check_worker(worker_id)
    params = {"worker_id": worker_id, "now": checked_now(now), **values}
    if not messages:
        return []
    params["lease_ids"] = [m.id for m in messages]
    params["lease_tokens"] = [m.lease_token for m in messages]
    return await fetch_all(db, statement, params)


async def _acknowledge(
    db: AsyncDB,
    statement: Executable,
    messages: Sequence[ClaimedMessage],
    worker_id: str,
    now: datetime | None,
    **values: Any,
) -> AckResult:
    rows = await _run_fenced(db, statement, messages, worker_id, now, **values)
    applied = frozenset(row[0] for row in rows)
    return AckResult(applied=applied, lost=frozenset(m.id for m in messages) - applied)


def _error_for(message: ClaimedMessage, error: str | Mapping[int, str]) -> str:
    if isinstance(error, str):
        text = error
    elif message.id in error:
        text = error[message.id]
    else:
        raise InvalidArgumentError(f"error: no entry for message {message.id}")
    if not isinstance(text, str):
        raise InvalidArgumentError(f"error for message {message.id} must be text, got {text!r}")
    return storable_error(text)


def storable_error(text: str) -> str:
    """``text`` as an ``error`` column holds it: at most ``MAX_ERROR_LENGTH`` characters
    (cut with "…"), without NUL or lone surrogates (from undecodable bytes), which
    PostgreSQL text cannot store."""
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _retry_delay(
    message: ClaimedMessage,
    delay: float | timedelta | Mapping[int, float | timedelta] | None,
    backoff: BackoffPolicy,
) -> float:
    chosen = delay.get(message.id) if isinstance(delay, Mapping) else delay
    if chosen is None:
        chosen = backoff(message.attempts, message.type)
    return _seconds("delay", chosen, positive=False).total_seconds()


def checked_now(now: datetime | None) -> datetime | None:
    """``now`` unchanged, if it is ``None`` or timezone-aware; else InvalidArgumentError."""
    if now is not None and now.utcoffset() is None:
        raise InvalidArgumentError("now must be a timezone-aware datetime")
    return now


def _seconds(name: str, value: float | timedelta, *, positive: bool) -> timedelta:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    too_small = seconds <= 0 if positive else seconds < 0
    if not math.isfinite(seconds) or too_small or seconds > MAX_DELAY_SECONDS:
        low = "> 0" if positive else ">= 0"
        raise InvalidArgumentError(
            f"{name} must be {low} and at most {MAX_DELAY_SECONDS:.0f} seconds, got {value!r}"
        )
    return timedelta(seconds=seconds)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_CLAIM_LIMIT}")


def _check_max_attempts(max_attempts: int) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgumentError("max_attempts must be an integer >= 1")


def _check_worker(worker_id: str) -> None:
    if not isinstance(worker_id, str) or not worker_id:
        raise InvalidArgumentError("worker_id must be a non-empty string")
