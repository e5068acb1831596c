"""Running a handler on a batch, and turning what it returned (or raised) into acks.

The one place that decides, per message, how a handler's result is recorded:

- :data:`~outbox.runtime.handler.DELIVERED` → ``published``; :class:`GiveUp` → ``dead``;
- :data:`~outbox.runtime.handler.NOT_ATTEMPTED` → handed back uncounted (in an ordered
  batch, a message after one of its key that failed); a message reported delivered after
  one of its key failed in the same batch is logged (``message.out_of_order``): a handler
  must not do that;
- :class:`Retry` → rescheduled after :func:`retry_delay` (the one clamp of every retry delay),
  except an ``outage`` on the message's last attempt, which is handed back uncounted: an
  outage never burns a message into ``dead``;
- :class:`~outbox.primitives.errors.TransportUnavailable` → the whole batch handed back
  uncounted, held for the transport pause;
- anything else (a timeout, a wrong count of outcomes, a non-outcome, an exception) → a retry
  whose error says what went wrong, so a buggy handler can neither lose messages nor crash
  the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import anyio

from outbox.primitives.backoff import BackoffPolicy
from outbox.primitives.constants import BACKSTOP_MARGIN_SECONDS, MAX_DELAY_SECONDS
from outbox.primitives.errors import TransportUnavailable, error_text
from outbox.primitives.logs import log_event
from outbox.primitives.messages import ClaimedMessage
from outbox.runtime.acknowledger import Acks
from outbox.runtime.handler import (
    Delivered,
    GiveUp,
    Handler,
    NotAttempted,
    Outcome,
    Retry,
)
from outbox.runtime.health import Health

__all__ = [
    "acks_for_failure",
    "acks_for_outcomes",
    "retry_delay",
    "run_handler",
]

log = logging.getLogger("outbox.worker")


async def run_handler(
    handler: Handler,
    messages: Sequence[ClaimedMessage],
    *,
    time_limit: float,
    max_attempts: int,
    backoff: BackoffPolicy,
    health: Health,
) -> Acks:
    """Call ``handler.handle_batch(messages)`` within ``time_limit`` and return the acks to write.

    A handler with ``enforces_timeouts = True`` times its own messages out; ``time_limit``
    plus :data:`~outbox.primitives.constants.BACKSTOP_MARGIN_SECONDS` is then only a
    backstop. Reports transport failures and recoveries to ``health``. Never raises, except
    for a real cancellation of this task.
    """
    own_timeouts = bool(getattr(handler, "enforces_timeouts", False))
    limit = time_limit + BACKSTOP_MARGIN_SECONDS if own_timeouts else time_limit
    outcomes: Sequence[Outcome] | None = None
    try:
        with anyio.move_on_after(limit):
            outcomes = await handler.handle_batch(messages)
    except TransportUnavailable as exc:
        hold = health.transport_failed(exc)
        return Acks(released=[(m, hold) for m in messages])
    except anyio.get_cancelled_exc_class() as exc:
        if _really_cancelled():
            raise
        return _handler_failed(messages, exc, backoff)  # a stray CancelledError
    except Exception as exc:
        return _handler_failed(messages, exc, backoff)
    if outcomes is None:
        return acks_for_failure(messages, f"handler timed out after {limit:g}s", backoff)
    acks = acks_for_outcomes(
        messages,
        outcomes,
        backoff=backoff,
        max_attempts=max_attempts,
        outage_hold=health.transport_failed,
    )
    if acks.published:
        health.transport_ok()
    return acks


def retry_delay(retry: Retry, message: ClaimedMessage, backoff: BackoffPolicy) -> float:
    """Seconds until ``message`` is due again: the handler's delay if it is a usable number,
    else the backoff policy's; never below ``min_delay``; within ``[0, MAX_DELAY_SECONDS]``."""
    delay = _usable(retry.delay)
    seconds = backoff(message.attempts, message.type) if delay is None else delay
    floor = _usable(retry.min_delay)
    if floor is not None:
        seconds = max(seconds, floor)
    return min(seconds, MAX_DELAY_SECONDS)


def acks_for_outcomes(
    messages: Sequence[ClaimedMessage],
    outcomes: Sequence[Outcome],
    *,
    backoff: BackoffPolicy,
    max_attempts: int,
    outage_hold: Callable[[str], float],
) -> Acks:
    """The acks for a handler's ``outcomes`` (one per message, in order).

    ``outage_hold(error)`` is called for an outage on a last attempt: it pauses the transport
    and returns how long the message is held back.
    """
    acks = Acks()
    if len(outcomes) != len(messages):
        error = f"handler returned {len(outcomes)} outcomes for {len(messages)} messages"
        return acks_for_failure(messages, error, backoff)
    failed_keys: set[str] = set()  # ordered keys with a message not delivered in this batch
    for message, outcome in zip(messages, outcomes, strict=True):
        ordered_key = message.key if message.seq is not None else None
        if isinstance(outcome, Delivered):
            acks.published.append(message)
            if ordered_key in failed_keys:
                log_event(
                    log,
                    logging.WARNING,
                    "message.out_of_order",
                    id=message.id,
                    key=ordered_key,
                    seq=message.seq,
                )
            continue
        if ordered_key is not None:
            failed_keys.add(ordered_key)
        if isinstance(outcome, NotAttempted):
            acks.released.append((message, None))
        elif isinstance(outcome, GiveUp):
            acks.dead.append((message, str(outcome.error)))
        elif isinstance(outcome, Retry):
            if outcome.outage and message.attempts >= max_attempts:
                acks.released.append((message, outage_hold(str(outcome.error))))
            else:
                acks.retried.append(_scheduled(message, outcome, backoff))
        else:
            acks.retried.append(_scheduled(message, Retry(f"not an outcome: {outcome!r}"), backoff))
    return acks


def acks_for_failure(
    messages: Sequence[ClaimedMessage], error: str | BaseException, backoff: BackoffPolicy
) -> Acks:
    """Every message retried with ``error`` (a handler that raised or timed out)."""
    retry = Retry(error if isinstance(error, str) else error_text(error))
    return Acks(retried=[_scheduled(m, retry, backoff) for m in messages])


def _scheduled(
    message: ClaimedMessage, retry: Retry, backoff: BackoffPolicy
) -> tuple[ClaimedMessage, Retry]:
    """``message`` paired with ``retry``'s error and its resolved delay."""
    return message, Retry(str(retry.error), retry_delay(retry, message, backoff))


def _handler_failed(
    messages: Sequence[ClaimedMessage], exc: BaseException, backoff: BackoffPolicy
) -> Acks:
    log_event(
        log,
        logging.ERROR,
        "handler.failed",
        batch=len(messages),
        first_id=messages[0].id,
        error=error_text(exc),
    )
    return acks_for_failure(messages, exc, backoff)


def _really_cancelled() -> bool:
    """Whether this task is being cancelled (not merely handed a stray CancelledError)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _usable(seconds: object) -> float | None:
    """``seconds`` as a float when it is a number >= 0 (NaN is not), else ``None``."""
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
