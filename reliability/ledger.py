"""What the run sent and what it saw: the facts the verdict is drawn from.

Times are wall-clock (``time.time()``), comparable with PostgreSQL's ``now()`` on the same
machine. Only the traffic thread writes here; the conductor reads after the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Arrival", "Ledger"]


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message as the subscriber received it."""

    at: float
    id: int
    room: str
    seq: int | None


@dataclass
class Ledger:
    chat: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Committed chat messages: outbox id -> (room, time COMMIT was sent)."""
    chat_unknown: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Chat messages whose COMMIT broke off: resolved from the database after the run."""
    rolled_back: set[int] = field(default_factory=set)
    """Outbox ids taken by transactions that rolled back (on purpose or by a failure)."""
    documents: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Committed document messages: outbox id -> (document id, "readable" | "unreadable")."""
    documents_unknown: dict[int, tuple[str, str]] = field(default_factory=dict)
    foreign: dict[int, str] = field(default_factory=dict)
    """Messages naming another user's document: outbox id -> that document's id."""
    poison: dict[int, str] = field(default_factory=dict)
    """Rows that must end ``dead``: outbox id -> what is wrong with them."""
    transactions: int = 0
    rolled_back_on_purpose: int = 0
    broken_transactions: int = 0
    bursts: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    subscriber_gaps: list[tuple[float, float]] = field(default_factory=list)
    """Spans in which the subscriber was not subscribed (Redis down, reconnecting)."""
    subscribed_at: float = 0.0
