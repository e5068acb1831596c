"""Every exception the outbox raises on purpose, and how foreign errors are shown.

::

    OutboxError                     root; catch this to catch everything below
    ├── InvalidMessageError         enqueue was given something it cannot store (also ValueError)
    ├── InvalidArgumentError        a storage call was given a bad argument (also ValueError)
    ├── ConfigurationError          a bad setting or database URL (also ValueError)
    ├── StartupError                a dependency stayed unreachable at start; the text names it
    ├── MissingExtraError           an optional dependency is missing (also ImportError;
    │                               in outbox.primitives.extras, which names the extra)
    └── HandlerError                raised by handler code to say how a message ends
        ├── RetryLaterError         transient: retry later (attempt counted)
        ├── GiveUpError             permanent: the message goes ``dead`` now
        └── TransportUnavailable    the transport is down: the batch goes back uncounted

Errors of third-party libraries are never re-raised as they are where they cross a boundary:
PostgreSQL's are classified by :func:`outbox.storage.pool.is_unreachable`, a handler
translates its transport's (Redis, HTTP) into the handler errors above ``from`` the original,
and :func:`error_text` is the one way any of them is shown in logs and stored errors.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "GiveUpError",
    "HandlerError",
    "InvalidArgumentError",
    "InvalidMessageError",
    "OutboxError",
    "RetryLaterError",
    "StartupError",
    "TransportUnavailable",
    "error_text",
]


class OutboxError(Exception):
    """Root of every exception this library raises on purpose."""


class InvalidMessageError(OutboxError, ValueError):
    """A message handed to ``enqueue``/``enqueue_many`` cannot be stored as given."""


class InvalidArgumentError(OutboxError, ValueError):
    """A storage call got an argument outside its contract (bad limit, prefix, delay...)."""


class ConfigurationError(OutboxError, ValueError):
    """A setting or URL is malformed; the message names it."""


class StartupError(OutboxError):
    """A dependency stayed unreachable for ``STARTUP_TIMEOUT_SECONDS``; the text names it."""


class HandlerError(OutboxError):
    """Raised by handler code to report a message's (or a batch's) fate to the runtime."""


class RetryLaterError(HandlerError):
    """This message failed for now: retry it, counting the attempt.

    ``delay`` replaces the backoff policy's delay; ``min_delay`` is a floor under whichever
    applies (a server's ``Retry-After``). ``outage`` marks a failure of the transport rather
    than of the message: the runtime never lets it take a message's last attempt.
    """

    def __init__(
        self,
        reason: str,
        delay: float | None = None,
        *,
        min_delay: float | None = None,
        outage: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.min_delay = min_delay
        self.outage = outage


class GiveUpError(HandlerError):
    """This message can never succeed (malformed, rejected): it goes ``dead`` with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransportUnavailable(HandlerError):
    """The handler's transport is down: the whole batch is handed back with no attempt
    counted, and the worker pauses claiming until a batch goes through."""


def error_text(exc: BaseException) -> str:
    """``ValueError: bad thing`` (the class name alone when the text is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
