"""Exceptions raised by the outbox library.

::

    OutboxError                     root; catch this to catch everything below
    ├── InvalidMessageError         enqueue was given something it cannot store (also ValueError)
    ├── InvalidArgumentError        a storage call was given a bad argument (also ValueError)
    └── ConfigurationError          a bad setting or database URL (also ValueError)
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidArgumentError",
    "InvalidMessageError",
    "OutboxError",
]


class OutboxError(Exception):
    """Root of every exception this library raises on purpose."""


class InvalidMessageError(OutboxError, ValueError):
    """A message handed to ``enqueue``/``enqueue_many`` cannot be stored as given."""


class InvalidArgumentError(OutboxError, ValueError):
    """A storage call got an argument outside its contract (bad limit, prefix, delay...)."""


class ConfigurationError(OutboxError, ValueError):
    """A setting or URL is malformed; the message names it."""
