"""The batches a worker has claimed and not yet acknowledged.

Shared by the dispatch loop (which adds and removes batches and waits for free capacity) and
the maintenance tasks (the heartbeat extends the leases of long-running batches).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import anyio

from outbox.primitives.messages import ClaimedMessage

__all__ = ["Batch", "InFlight"]


@dataclass(eq=False)
class Batch:
    """One claimed batch, from its claim until its outcomes are written."""

    messages: Sequence[ClaimedMessage]
    claimed_at: float = field(default_factory=time.monotonic)
    decided: bool = False
    """Outcomes handed to the acknowledger: never reschedule this batch as abandoned."""
    lost: set[int] = field(default_factory=set)
    """Ids whose lease the heartbeat found taken: not extended again."""


class InFlight:
    """Claimed batches; the dispatch loop keeps their messages at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batches: set[Batch] = set()
        self.count = 0
        self._freed = anyio.Event()

    def free_capacity(self) -> int:
        return self.capacity - self.count

    async def wait_for_capacity(self) -> None:
        """Return when a message slot may be free (callers check again), or on :meth:`wake`."""
        if self.free_capacity() > 0:
            return
        self._freed = anyio.Event()
        await self._freed.wait()

    def wake(self) -> None:
        """End the current :meth:`wait_for_capacity` (the worker is stopping)."""
        self._freed.set()

    def add(self, messages: Sequence[ClaimedMessage]) -> Batch:
        batch = Batch(messages)
        self.batches.add(batch)
        self.count += len(messages)
        return batch

    def remove(self, batch: Batch) -> None:
        self.batches.discard(batch)
        self.count -= len(batch.messages)
        self._freed.set()

    def due_for_heartbeat(self, older_than: float) -> list[ClaimedMessage]:
        """Messages of undecided batches claimed at least ``older_than`` seconds ago whose
        lease is still ours."""
        now = time.monotonic()
        return [
            m
            for b in self.batches
            if now - b.claimed_at >= older_than and not b.decided
            for m in b.messages
            if m.id not in b.lost
        ]

    def mark_lost(self, ids: Iterable[int]) -> None:
        lost = set(ids)
        for batch in self.batches:
            batch.lost.update(m.id for m in batch.messages if m.id in lost)

    def undecided(self) -> list[ClaimedMessage]:
        """Messages of batches whose handler never finished (for the stop's last writes)."""
        return [m for b in self.batches if not b.decided for m in b.messages]
