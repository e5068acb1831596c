"""From what a handler returned (or raised) to the acknowledgements to write.

The one place that decides, per message, how a handler's result is recorded:

- :data:`~outbox.runtime.handler.DELIVERED` → ``published``; :class:`GiveUp` → ``dead``;
- :class:`Retry` → rescheduled after :func:`retry_delay` (the one clamp of every retry delay),
  except an ``outage`` on the message's last attempt, which is handed back uncounted: an
  outage never burns a message into ``dead``;
- anything else (a wrong count of outcomes, a non-outcome, an exception) → a retry whose error
  says what went wrong, so a buggy handler can neither lose messages nor crash the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outbox.primitives.backoff import BackoffPolicy
from outbox.primitives.constants import MAX_DELAY_SECONDS
from outbox.primitives.errors import error_text
from outbox.primitives.messages import ClaimedMessage
from outbox.runtime.acknowledger import Acks
from outbox.runtime.handler import Delivered, GiveUp, Outcome, Retry

__all__ = ["acks_for_failure", "acks_for_outcomes", "retry_delay"]


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
    for message, outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, Delivered):
            acks.published.append(message)
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


def _usable(seconds: object) -> float | None:
    """``seconds`` as a float when it is a number >= 0 (NaN is not), else ``None``."""
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
