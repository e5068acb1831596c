"""Value types crossing the library boundary: messages in, claimed rows out, ack results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import BaseModel

__all__ = [
    "AckResult",
    "ClaimedMessage",
    "JSONValue",
    "NewMessage",
    "Payload",
    "ReapResult",
    "RescheduleResult",
]

JSONValue = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None
"""Any value that JSON can represent."""

Payload = dict[str, JSONValue] | BaseModel
"""What a message carries: a JSON object, or a pydantic model dumped in JSON mode."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message for :func:`outbox.enqueue_many`; fields as in :func:`outbox.enqueue`."""

    type: str
    payload: Payload
    key: str | None = None
    delay: timedelta | float | None = None
    available_at: datetime | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A row claimed by a worker, leased to ``locked_by`` under ``lease_token``.

    ``attempts`` already counts this claim. Acknowledgements are fenced on ``(id,
    lease_token)``, so keep the object and hand it back to ``mark_published``/
    ``reschedule``/... unchanged.
    """

    id: int
    type: str
    key: str | None
    payload: JSONValue
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    locked_by: str
    locked_until: datetime
    error: str | None
    lease_token: UUID


@dataclass(frozen=True, slots=True)
class AckResult:
    """Which ids an acknowledgement changed and which it did not (their lease was lost)."""

    applied: frozenset[int]
    lost: frozenset[int]

    @property
    def ok(self) -> bool:
        """True when every message's lease was still held and the change applied."""
        return not self.lost


@dataclass(frozen=True, slots=True)
class RescheduleResult:
    """Outcome of :func:`outbox.reschedule`: retried later, given up (``dead``), or lost."""

    retried: frozenset[int]
    dead: frozenset[int]
    lost: frozenset[int]

    @property
    def ok(self) -> bool:
        return not self.lost


@dataclass(frozen=True, slots=True)
class ReapResult:
    """Rows whose lease had expired: back to ``pending``, or ``dead`` at the attempt limit."""

    requeued: frozenset[int]
    dead: frozenset[int]
