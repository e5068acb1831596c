"""Acknowledging outcomes in batches: group commit for acks.

Batches hand their outcomes to :meth:`Acknowledger.submit` and wait. One flush task writes
everything submitted since its last flush with one statement per kind (published, retried,
dead, released), so concurrent batches share round trips, and a lone batch costs exactly one
statement per kind it used. A flush that fails on a database error is retried with backoff
until it succeeds or the worker is cancelled; acks are fenced, so a late one is harmless,
and an ack never written means only that the message is delivered again after its lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from outbox._db import AsyncDB
from outbox.backoff import BackoffPolicy
from outbox.handler import Retry
from outbox.logs import log_event
from outbox.messages import AckResult, ClaimedMessage
from outbox.metrics import WorkerMetrics
from outbox.storage import mark_dead, mark_published, release, reschedule

__all__ = ["Acknowledger", "Acks"]

log = logging.getLogger("outbox.worker")


@dataclass
class Acks:
    """Outcomes of one or more batches, by kind."""

    published: list[ClaimedMessage] = field(default_factory=list)
    retried: list[tuple[ClaimedMessage, Retry]] = field(default_factory=list)
    dead: list[tuple[ClaimedMessage, str]] = field(default_factory=list)
    released: list[ClaimedMessage] = field(default_factory=list)
    release_hold: float | None = None
    duration_ms: dict[int, float] = field(default_factory=dict)
    """How long the handler took, by message id (for the logs)."""

    def extend(self, other: Acks) -> None:
        self.published += other.published
        self.retried += other.retried
        self.dead += other.dead
        self.released += other.released
        self.duration_ms.update(other.duration_ms)
        if other.release_hold is not None:
            self.release_hold = max(self.release_hold or 0.0, other.release_hold)

    def __bool__(self) -> bool:
        return bool(self.published or self.retried or self.dead or self.released)


class Acknowledger:
    """Writes submitted outcomes in grouped, fenced statements (see the module docstring)."""

    def __init__(
        self,
        db: AsyncDB,
        *,
        worker_id: str,
        max_attempts: int,
        backoff: BackoffPolicy,
        metrics: WorkerMetrics,
        on_database_error: Callable[[BaseException], None],
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.metrics = metrics
        self.on_database_error = on_database_error
        self._buffer = Acks()
        self._flushed = anyio.Event()
        self._has_work = anyio.Event()

    async def submit(self, acks: Acks) -> None:
        """Queue ``acks`` and return once a flush has written them."""
        if not acks:
            return
        self._buffer.extend(acks)
        done = self._flushed
        self._has_work.set()
        await done.wait()

    async def run(self) -> None:
        """Flush whatever was submitted, as it arrives, until cancelled."""
        while True:
            await self._has_work.wait()
            self._has_work = anyio.Event()
            acks, self._buffer = self._buffer, Acks()
            done, self._flushed = self._flushed, anyio.Event()
            await self._flush_until_written(acks)
            done.set()

    async def _flush_until_written(self, acks: Acks) -> None:
        delay = 0.05
        while True:
            try:
                await self._flush(acks)
                return
            except Exception as exc:  # database down: keep the outcomes, try again
                self.on_database_error(exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _flush(self, acks: Acks) -> None:
        m = self.metrics
        wid = self.worker_id
        if acks.published:
            result = await mark_published(self.db, acks.published, worker_id=wid)
            self._lost(result, acks.published, "published")
            now = time.time()
            lag_by_type: dict[str, Any] = {}  # one labels() lookup per type, not per message
            for message in acks.published:
                if message.id in result.applied:
                    histogram = lag_by_type.get(message.type)
                    if histogram is None:
                        histogram = lag_by_type[message.type] = m.lag_seconds.labels(message.type)
                    histogram.observe(now - message.created_at.timestamp())
            m.count(m.published, (x for x in acks.published if x.id in result.applied))
            if log.isEnabledFor(logging.DEBUG):
                for message in acks.published:
                    if message.id in result.applied:
                        self._log(logging.DEBUG, "message.published", message, acks)
            acks.published = []  # written: a retried flush must not repeat it
        if acks.retried:
            messages = [message for message, _ in acks.retried]
            outcome = await reschedule(
                self.db,
                messages,
                worker_id=wid,
                error={message.id: r.error for message, r in acks.retried},
                delay={message.id: r.delay for message, r in acks.retried if r.delay is not None},
                max_attempts=self.max_attempts,
                backoff=self.backoff,
            )
            for message, r in acks.retried:
                if message.id in outcome.lost:
                    continue
                gone = message.id in outcome.dead
                level, event = (
                    (logging.WARNING, "message.dead") if gone else (logging.INFO, "message.retried")
                )
                self._log(level, event, message, acks, error=r.error)
            self._lost(AckResult(outcome.retried | outcome.dead, outcome.lost), messages, "retry")
            m.count(m.retried, (x for x in messages if x.id in outcome.retried))
            m.count(m.dead, (x for x in messages if x.id in outcome.dead))
            acks.retried = []
        if acks.dead:
            messages = [message for message, _ in acks.dead]
            errors = {message.id: error for message, error in acks.dead}
            result = await mark_dead(self.db, messages, worker_id=wid, error=errors)
            for message in messages:
                if message.id in result.applied:
                    self._log(
                        logging.WARNING, "message.dead", message, acks, error=errors[message.id]
                    )
            self._lost(result, messages, "dead")
            m.count(m.dead, (x for x in messages if x.id in result.applied))
            acks.dead = []
        if acks.released:
            result = await release(self.db, acks.released, worker_id=wid, delay=acks.release_hold)
            self._lost(result, acks.released, "release")
            m.count(m.released, (x for x in acks.released if x.id in result.applied))
            acks.released = []

    @staticmethod
    def _log(level: int, event: str, message: ClaimedMessage, acks: Acks, **extra: str) -> None:
        log_event(
            log,
            level,
            event,
            id=message.id,
            type=message.type,
            attempt=message.attempts,
            duration_ms=acks.duration_ms.get(message.id),
            **extra,
        )

    def _lost(self, result: AckResult, messages: Sequence[ClaimedMessage], action: str) -> None:
        if not result.lost:
            return
        lost = [m for m in messages if m.id in result.lost]
        self.metrics.count(self.metrics.lease_lost, lost)
        for message in lost:
            log_event(
                log,
                logging.WARNING,
                "lease.lost",
                id=message.id,
                type=message.type,
                attempt=message.attempts,
                action=action,
            )
