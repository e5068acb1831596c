"""What a worker's domain code implements, and how it reports each message's fate.

A :class:`Handler` gets a claimed batch and returns one :data:`Outcome` per message:
:data:`DELIVERED`, :class:`Retry` (attempt counted; backoff or the given delay) or
:class:`GiveUp` (``dead`` now). When its transport is down it raises
:class:`~outbox.primitives.errors.TransportUnavailable` instead: the whole batch is handed
back with no attempt counted and the worker pauses, so an outage never burns messages into
``dead``.

Most domain code handles one message at a time: write a :class:`MessageHandler` and wrap it
in :class:`PerMessage`, which runs a batch's messages concurrently, each under a timeout, and
maps :class:`~outbox.primitives.errors.RetryLaterError`, ``GiveUpError`` and any other
exception to outcomes.

**Ordered batches** (``ORDERING=key``): messages that carry a position (``seq``) come in
their key's order. A handler must not deliver a key's message after one of that key failed
in the same batch: it returns :data:`NOT_ATTEMPTED` for those (handed back uncounted, to go
after the failed one). :class:`PerMessage` runs each key's messages one after another and
does exactly that; the runtime logs a message delivered after a failure of its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import inf
from typing import Final, Protocol

import anyio

from outbox.primitives.errors import (
    GiveUpError,
    RetryLaterError,
    TransportUnavailable,
    error_text,
)
from outbox.primitives.messages import ClaimedMessage

__all__ = [
    "DELIVERED",
    "NOT_ATTEMPTED",
    "Delivered",
    "GiveUp",
    "Handler",
    "MessageHandler",
    "NotAttempted",
    "Outcome",
    "PerMessage",
    "Retry",
]


@dataclass(frozen=True, slots=True)
class Delivered:
    """Delivered: the row becomes ``published``."""


DELIVERED: Final = Delivered()


@dataclass(frozen=True, slots=True)
class Retry:
    """Failed this time: retry after ``delay`` seconds (``None``: the backoff policy).

    ``min_delay`` is a floor under that delay; an ``outage`` (the transport failed, not the
    message) is counted like any retry but never takes the last attempt: the runtime hands
    such a message back uncounted instead. See :func:`outbox.runtime.outcomes.retry_delay`.
    """

    error: str
    delay: float | None = None
    min_delay: float | None = None
    outage: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Will never succeed (malformed, rejected): ``dead`` now, with ``error``."""

    error: str


@dataclass(frozen=True, slots=True)
class NotAttempted:
    """Not tried (an earlier message of its key failed in this batch): handed back to
    ``pending`` with the attempt uncounted, behind the failed one."""


NOT_ATTEMPTED: Final = NotAttempted()


Outcome = Delivered | Retry | GiveUp | NotAttempted


class Handler(Protocol):
    """Domain code behind a worker.

    ``name`` says what the handler talks to (shown when :meth:`check` fails at start-up).
    :meth:`handle_batch` returns outcomes in the order of ``messages``. The worker bounds each
    call by ``HANDLER_TIMEOUT_SECONDS``; a handler with an attribute ``enforces_timeouts =
    True`` (like :class:`PerMessage`) times its own work out, and the worker's bound becomes a
    backstop a few seconds later.
    """

    name: str

    async def check(self) -> None:
        """Raise if a dependency is unreachable: called with retries at start-up, and while
        idle every ``TRANSPORT_CHECK_SECONDS`` (bounded by ``HANDLER_TIMEOUT_SECONDS``)."""

    async def handle_batch(self, messages: Sequence[ClaimedMessage]) -> Sequence[Outcome]: ...

    async def aclose(self) -> None:
        """Release connections (called once at shutdown)."""


class MessageHandler(Protocol):
    """Handles one message; returning means delivered. See :class:`PerMessage`."""

    name: str

    async def check(self) -> None: ...

    async def handle(self, message: ClaimedMessage) -> None: ...

    async def aclose(self) -> None: ...


class PerMessage:
    """A :class:`Handler` that runs a :class:`MessageHandler` on each message concurrently.

    Each message gets ``timeout`` seconds (then :class:`Retry`). ``RetryLaterError`` and
    ``GiveUpError`` map to their outcomes, ``TransportUnavailable`` from any message hands
    the whole batch back, and any other exception is a :class:`Retry` with its text.
    Messages with a key and a position (ordered claims) run one after another per key, in
    the batch's order, while keys run concurrently; after a key's first message that is
    not delivered, the rest of that key are :data:`NOT_ATTEMPTED`. The whole batch ends
    within ``timeout``: a key's later message that would run past it is cut off and
    :data:`NOT_ATTEMPTED` (handed back uncounted).
    """

    enforces_timeouts = True

    def __init__(self, handler: MessageHandler, *, timeout: float) -> None:
        self.inner = handler
        self.name = handler.name
        self.timeout = timeout

    async def check(self) -> None:
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_batch(self, messages: Sequence[ClaimedMessage]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [DELIVERED] * len(messages)
        transport_down: list[TransportUnavailable] = []

        async def one(index: int, message: ClaimedMessage) -> bool:
            """Handle one message; whether it was delivered."""
            try:
                with anyio.fail_after(self.timeout):
                    await self.inner.handle(message)
                return True
            except TransportUnavailable as exc:
                transport_down.append(exc)
            except RetryLaterError as exc:
                outcomes[index] = Retry(exc.reason, exc.delay, exc.min_delay, exc.outage)
            except GiveUpError as exc:
                outcomes[index] = GiveUp(exc.reason)
            except TimeoutError:
                outcomes[index] = Retry(f"timed out after {self.timeout:g}s")
            except Exception as exc:
                outcomes[index] = Retry(error_text(exc))
            return False

        # A key's messages run one after another, yet the batch as a whole must end within
        # one timeout (the runtime's backstop is sized for that): a later message of a key
        # gets what is left of it, and is handed back unattempted when that runs out.
        deadline = anyio.current_time() + self.timeout

        async def in_order(indexes: list[int]) -> None:
            for position, index in enumerate(indexes):
                delivered = False
                with anyio.move_on_after(deadline - anyio.current_time() if position else inf):
                    delivered = await one(index, messages[index])
                    if not delivered:
                        position += 1  # failed: the rest of the key waits behind it
                if not delivered:
                    for later in indexes[position:]:
                        outcomes[later] = NOT_ATTEMPTED
                    return

        async with anyio.create_task_group() as tg:
            for indexes in _by_key(messages):
                tg.start_soon(in_order, indexes)
        if transport_down:
            raise transport_down[0]
        return outcomes


def _by_key(messages: Sequence[ClaimedMessage]) -> list[list[int]]:
    """Indexes of ``messages`` to run in order: one group per key of the positioned
    messages (in batch order), one group per other message."""
    groups: list[list[int]] = []
    by_key: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        if message.key is None or message.seq is None:
            groups.append([index])
        elif message.key in by_key:
            by_key[message.key].append(index)
        else:
            by_key[message.key] = group = [index]
            groups.append(group)
    return groups
