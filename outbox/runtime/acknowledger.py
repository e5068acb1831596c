"""Acknowledging outcomes in batches: group commit for acks.

Batches hand their outcomes to :meth:`Acknowledger.submit` and wait. One flush task writes
everything submitted since its last flush with one statement per kind (published, dead,
released, retried), so concurrent batches share round trips, and a lone batch costs exactly
one statement per kind it used.

A write that fails because the database is unreachable is retried with backoff until it
succeeds or the worker is cancelled (acks are fenced, so a late one is harmless). A write
the database rejects for its content is split up and retried message by message; a message
that still fails is logged as ``ack.failed`` and left to its lease (it is reaped and
delivered again, counting towards its attempts). One bad message never blocks the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from outbox.primitives.delays import GrowingDelay
from outbox.primitives.errors import error_text
from outbox.primitives.logs import log_event
from outbox.primitives.messages import AckResult, ClaimedMessage
from outbox.runtime.handler import Retry
from outbox.runtime.metrics import WorkerMetrics
from outbox.storage.claims import mark_dead, mark_published, release, reschedule

__all__ = ["Acknowledger", "Acks", "is_rejected_input", "report_lost"]

log = logging.getLogger("outbox.worker")


@dataclass
class Acks:
    """Outcomes of one or more batches, by kind. ``released`` pairs a message with its hold."""

    published: list[ClaimedMessage] = field(default_factory=list)
    dead: list[tuple[ClaimedMessage, str]] = field(default_factory=list)
    released: list[tuple[ClaimedMessage, float | None]] = field(default_factory=list)
    retried: list[tuple[ClaimedMessage, Retry]] = field(default_factory=list)
    """Each with its resolved delay (see :func:`outbox.runtime.outcomes.retry_delay`)."""
    duration_ms: dict[int, float] = field(default_factory=dict)
    """How long the handler took, by message id (for the logs)."""

    def extend(self, other: Acks) -> None:
        self.published += other.published
        self.dead += other.dead
        self.released += other.released
        self.retried += other.retried
        self.duration_ms.update(other.duration_ms)

    def __bool__(self) -> bool:
        return bool(self.published or self.dead or self.released or self.retried)

    def kinds(self) -> Iterator[Acks]:
        """One :class:`Acks` per non-empty kind, in write order."""
        empty = Acks(duration_ms=self.duration_ms)
        if self.published:
            yield replace(empty, published=self.published)
        if self.dead:
            yield replace(empty, dead=self.dead)
        if self.released:
            yield replace(empty, released=self.released)
        if self.retried:
            yield replace(empty, retried=self.retried)

    def kind(self) -> str:
        """The first kind these acks hold (``published``, ``dead``, ``released``,
        ``retried``), for the metrics of a part from :meth:`kinds`."""
        for name in ("published", "dead", "released", "retried"):
            if getattr(self, name):
                return name
        return "none"

    def singles(self) -> Iterator[Acks]:
        """One :class:`Acks` per message (to isolate one the database rejects)."""
        empty = Acks(duration_ms=self.duration_ms)
        yield from (replace(empty, published=[m]) for m in self.published)
        yield from (replace(empty, dead=[d]) for d in self.dead)
        yield from (replace(empty, released=[r]) for r in self.released)
        yield from (replace(empty, retried=[r]) for r in self.retried)

    def record_duration(self, seconds: float, *, all_messages: bool) -> None:
        """Note the handler's time for the log lines of these messages: every message's when
        ``all_messages`` (published lines are DEBUG), else only the unpublished ones'."""
        shown = self.messages() if all_messages else [m for m, _ in (*self.dead, *self.retried)]
        self.duration_ms.update(dict.fromkeys((m.id for m in shown), round(seconds * 1000, 2)))

    def messages(self) -> list[ClaimedMessage]:
        return [
            *self.published,
            *(m for m, _ in self.dead),
            *(m for m, _ in self.released),
            *(m for m, _ in self.retried),
        ]


def is_rejected_input(exc: BaseException) -> bool:
    """True when retrying the same write cannot help: bad values, not an unreachable server.

    Our own argument checks (``ValueError``/``TypeError``) and PostgreSQL's data exceptions
    and constraint violations (SQLSTATE classes 22 and 23).
    """
    if isinstance(exc, ValueError | TypeError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in ("22", "23")


class Acknowledger:
    """Writes submitted outcomes in grouped, fenced statements (see the module docstring)."""

    def __init__(
        self,
        db: Any,
        *,
        worker_id: str,
        max_attempts: int,
        metrics: WorkerMetrics,
        on_database_error: Callable[[BaseException], None],
        hold_keys: bool = False,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.hold_keys = hold_keys
        self.metrics = metrics
        self.on_database_error = on_database_error
        self._buffer = Acks()
        self._flushed = anyio.Event()
        self._has_work = anyio.Event()
        self._writing: anyio.Event | None = None  # set when the flush under way ends

    async def submit(self, acks: Acks) -> None:
        """Queue ``acks`` and return once a flush has written (or given up on) them."""
        if not acks:
            return
        self._buffer.extend(acks)
        done = self._flushed
        self._has_work.set()
        await done.wait()

    async def drain(self) -> None:
        """Return once everything submitted so far is written (even if submitters left)."""
        while self._writing is not None or self._buffer:
            if self._writing is not None:
                await self._writing.wait()
            else:
                await self._flushed.wait()

    async def run(self) -> None:
        """Flush whatever was submitted, as it arrives, until cancelled."""
        while True:
            await self._has_work.wait()
            self._has_work = anyio.Event()
            acks, self._buffer = self._buffer, Acks()
            done, self._flushed = self._flushed, anyio.Event()
            self._writing = done
            try:
                for part in acks.kinds():
                    await self._write_until_done(part)
            finally:
                self._writing = None
                done.set()

    async def _write_until_done(self, part: Acks) -> None:
        delays = GrowingDelay(0.05, 5.0)
        while True:
            try:
                started = time.monotonic()
                await self._write(part)
                elapsed = time.monotonic() - started
                self.metrics.ack_seconds.labels(part.kind()).observe(elapsed)
                return
            except Exception as exc:
                if is_rejected_input(exc):
                    await self._write_one_by_one(part, exc)
                    return
                self.on_database_error(exc)  # unreachable: keep the outcomes, try again
                await anyio.sleep(delays.next())

    async def _write_one_by_one(self, part: Acks, first_error: BaseException) -> None:
        singles = list(part.singles())
        if len(singles) == 1:
            (message,) = part.messages()
            log_event(
                log,
                logging.ERROR,
                "ack.failed",
                id=message.id,
                type=message.type,
                attempt=message.attempts,
                error=error_text(first_error),
            )
            return
        for single in singles:
            await self._write_until_done(single)

    async def _write(self, acks: Acks) -> None:
        """Write one kind of outcome (``acks`` holds only one kind)."""
        metrics = self.metrics
        wid = self.worker_id
        if acks.published:
            result = await mark_published(self.db, acks.published, worker_id=wid)
            self._lost(result, acks.published, "published")
            applied = [x for x in acks.published if x.id in result.applied]
            now = time.time()
            lag_by_type: dict[str, Any] = {}  # one labels() lookup per type, not per message
            for message in applied:
                histogram = lag_by_type.get(message.type)
                if histogram is None:
                    histogram = lag_by_type[message.type] = metrics.lag_seconds.labels(message.type)
                histogram.observe(now - message.created_at.timestamp())
            metrics.count(metrics.published, applied)
            if log.isEnabledFor(logging.DEBUG):
                for message in applied:
                    self._log(logging.DEBUG, "message.published", message, acks)
        if acks.dead:
            messages = [message for message, _ in acks.dead]
            errors = {message.id: error for message, error in acks.dead}
            result = await mark_dead(
                self.db, messages, worker_id=wid, error=errors, hold_keys=self.hold_keys
            )
            for message in messages:
                if message.id in result.applied:
                    error = errors[message.id]
                    self._log(logging.WARNING, "message.dead", message, acks, error=error)
            self._lost(result, messages, "dead")
            metrics.count(metrics.dead, (x for x in messages if x.id in result.applied))
        if acks.released:
            by_hold: dict[float | None, list[ClaimedMessage]] = {}
            for message, hold in acks.released:
                by_hold.setdefault(hold, []).append(message)
            for hold, messages in by_hold.items():
                result = await release(self.db, messages, worker_id=wid, delay=hold)
                self._lost(result, messages, "release")
                metrics.count(metrics.released, (x for x in messages if x.id in result.applied))
        if acks.retried:
            messages = [message for message, _ in acks.retried]
            outcome = await reschedule(
                self.db,
                messages,
                worker_id=wid,
                error={message.id: r.error for message, r in acks.retried},
                delay={message.id: r.delay or 0.0 for message, r in acks.retried},
                max_attempts=self.max_attempts,
                hold_keys=self.hold_keys,
            )
            for message, r in acks.retried:
                if message.id in outcome.lost:
                    continue
                if message.id in outcome.dead:
                    self._log(logging.WARNING, "message.dead", message, acks, error=r.error)
                else:
                    self._log(logging.INFO, "message.retried", message, acks, error=r.error)
            self._lost(AckResult(outcome.retried | outcome.dead, outcome.lost), messages, "retry")
            metrics.count(metrics.retried, (x for x in messages if x.id in outcome.retried))
            metrics.count(metrics.dead, (x for x in messages if x.id in outcome.dead))

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
        report_lost(self.metrics, result, messages, action)


def report_lost(
    metrics: WorkerMetrics, result: AckResult, messages: Sequence[ClaimedMessage], action: str
) -> None:
    """Count and log (``lease.lost``) the messages whose lease ``action`` found taken."""
    if not result.lost:
        return
    lost = [m for m in messages if m.id in result.lost]
    metrics.count(metrics.lease_lost, lost)
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
