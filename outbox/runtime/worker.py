"""The dispatch loop: claim → handle → acknowledge, around any
:class:`~outbox.runtime.handler.Handler`.

One :class:`Worker` per process runs these tasks:

- **dispatch**: claims up to ``min(BATCH_SIZE, free room)`` rows and starts a task for the
  batch; claims again at once after a non-empty batch; after an empty one waits for a
  notification or ``POLL_INTERVAL_MS``. At most ``CONCURRENCY`` messages are in flight
  (claimed and not yet acknowledged).
- **batch tasks**: call the handler under ``HANDLER_TIMEOUT_SECONDS`` and submit its
  outcomes to the :class:`~outbox.runtime.acknowledger.Acknowledger` (grouped, fenced statements).
- **heartbeat**: extends the leases of batches running longer than a third of the lease.
- **reaper**: returns expired leases of crashed workers to ``pending`` (or ``dead``).
- **wake-up** listener and, with metrics on, the HTTP server (up from the start, so
  ``/healthz`` answers during start-up) and the table gauges.

Failures: a database error anywhere is logged and retried with backoff (the pool reconnects;
every statement has ``DATABASE_TIMEOUT_SECONDS``); a handler's
:class:`~outbox.runtime.handler.TransportUnavailable` hands its batch back uncounted, held for the
pause, and pauses claiming with growing delays until a batch goes through.

Shutdown (:meth:`Worker.stop`): start-up checks and idle waits end at once; a claim under way
gets two seconds; a batch claimed during the stop is handed back uncounted; in-flight batches
get ``SHUTDOWN_GRACE_SECONDS``, then are cancelled and rescheduled due at once (their delivery
may have started, so the attempt stays counted). ``stop(force=True)`` (a second signal) cuts
every remaining wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import asyncpg

from outbox.primitives.constants import MAX_DELAY_SECONDS
from outbox.primitives.logs import log_event
from outbox.primitives.messages import ClaimedMessage
from outbox.primitives.urls import redacted_url
from outbox.runtime.acknowledger import Acknowledger, Acks, report_lost
from outbox.runtime.handler import Delivered, GiveUp, Handler, Outcome, Retry, TransportUnavailable
from outbox.runtime.handler import describe as describe_error
from outbox.runtime.metrics import WorkerMetrics, serve_http
from outbox.runtime.settings import WorkerSettings
from outbox.runtime.wakeup import Wakeup
from outbox.storage.claims import claim_batch, extend_lease, reap_expired_locks
from outbox.storage.pool import create_pool
from outbox.storage.stats import table_gauges

__all__ = ["StartupError", "Worker"]

log = logging.getLogger("outbox.worker")

GAUGE_REFRESH_SECONDS = 10.0
REAP_LIMIT = 1000
CLAIM_GRACE_SECONDS = 2.0
"""How long a claim under way may still finish after :meth:`Worker.stop`."""
FINAL_WRITE_SECONDS = 5.0
"""How long the last hand-backs may wait for the database after the grace period."""
BACKSTOP_MARGIN_SECONDS = 5.0
"""Extra time over ``HANDLER_TIMEOUT_SECONDS`` for handlers that time out on their own."""


class StartupError(Exception):
    """A dependency stayed unreachable for ``STARTUP_TIMEOUT_SECONDS``; the text names it."""


@dataclass(eq=False)
class _Batch:
    messages: Sequence[ClaimedMessage]
    claimed_at: float
    decided: bool = False
    """Outcomes handed to the acker: never reschedule this batch as abandoned."""
    lost: set[int] = field(default_factory=set)
    """Ids whose lease the heartbeat found taken: not extended again."""


class Worker:
    """Runs ``handler`` over the outbox rows selected by ``settings`` until :meth:`stop`."""

    def __init__(
        self,
        handler: Handler,
        settings: WorkerSettings,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.backoff = settings.backoff()
        self.db: Any = None  # the asyncpg pool, once run() opened it
        self._in_flight: set[_Batch] = set()
        self._in_flight_count = 0
        self._room = anyio.Event()
        self._stopping = anyio.Event()
        self._stop_scopes: set[anyio.CancelScope] = set()
        self._claim_scope: anyio.CancelScope | None = None
        self._batches_scope: anyio.CancelScope | None = None
        self._force = False
        self._ready = False
        self._database_error: str | None = None
        self._transport_error: str | None = None
        self._transport_paused_until = 0.0
        self._transport_failures = 0
        self.wakeup = Wakeup(
            settings.database_url,
            listen=settings.listens,
            application_name=f"outbox-listen {settings.worker_id}",
        )

    # -- control -----------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Begin a graceful stop; ``force`` also ends the grace period and final waits now."""
        if not self._stopping.is_set():
            log_event(log, logging.INFO, "worker.stopping", in_flight=self._in_flight_count)
        self._stopping.set()
        self.wakeup.wake()
        self._room.set()
        for scope in self._stop_scopes:
            scope.cancel()
        now = anyio.current_time()
        if self._claim_scope is not None:
            limit = now if force else now + CLAIM_GRACE_SECONDS
            self._claim_scope.deadline = min(self._claim_scope.deadline, limit)
        if force:
            self._force = True
            if self._batches_scope is not None:
                self._batches_scope.deadline = now

    def readiness(self) -> str | None:
        """``None`` when claiming normally, else why not (for ``/readyz``)."""
        if self._stopping.is_set():
            return "stopping"
        if not self._ready:
            return "starting"
        if self._database_error:
            return f"database unavailable: {self._database_error}"
        if self._transport_paused_until > time.monotonic():
            return f"{self.handler.name} unavailable: {self._transport_error}"
        return None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Check dependencies, then work until :meth:`stop`; returns after a clean stop.

        Raises :class:`StartupError` when a dependency stays unreachable at start (or the
        metrics port cannot be opened). A stop during start-up returns cleanly.
        """
        s = self.settings
        self.db = await create_pool(
            s.database_url,
            max_size=4,
            application_name=f"outbox {s.worker_id}",
            statement_cache_size=0 if s.pgbouncer_transaction_mode else 100,
            command_timeout=s.database_timeout_seconds,
        )
        try:
            async with anyio.create_task_group() as services:
                if s.metrics_port is not None:
                    await self._start_metrics(services)
                with self._stoppable():
                    await self._startup_checks()
                if self._stopping.is_set():
                    services.cancel_scope.cancel()
                    return
                acker = Acknowledger(
                    self.db,
                    worker_id=s.worker_id,
                    max_attempts=s.max_attempts,
                    backoff=self.backoff,
                    metrics=self.metrics,
                    on_database_error=self._database_failed,
                )
                services.start_soon(acker.run)
                services.start_soon(self.wakeup.run)
                services.start_soon(self._heartbeat)
                services.start_soon(self._reaper)
                self._ready = True
                log_event(
                    log,
                    logging.INFO,
                    "worker.ready",
                    worker_id=s.worker_id,
                    handler=self.handler.name,
                    include=",".join(s.include or ()),
                    exclude=",".join(s.exclude or ()),
                    batch_size=s.batch_size,
                    concurrency=s.max_in_flight,
                    listen=s.listens,
                )
                task_status.started()
                await self._work(acker)
                if not self._stopping.is_set():
                    raise RuntimeError("the worker loop ended without a stop request")
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.handler.aclose()
                with anyio.move_on_after(FINAL_WRITE_SECONDS) as closing:
                    await self.db.close()
                if closing.cancelled_caught:
                    self.db.terminate()
        log_event(log, logging.INFO, "worker.stopped", worker_id=s.worker_id)

    def _stoppable(self) -> anyio.CancelScope:
        """A cancel scope that :meth:`stop` cancels (for waits that must not delay a stop)."""
        scope = anyio.CancelScope()
        self._stop_scopes.add(scope)
        if self._stopping.is_set():
            scope.cancel()
        return scope

    # -- start-up ------------------------------------------------------------------------

    async def _start_metrics(self, services: anyio.abc.TaskGroup) -> None:
        s = self.settings
        try:
            await services.start(
                serve_http, s.metrics_host, s.metrics_port, self.metrics, self.readiness
            )
        except OSError as exc:
            where = f"{s.metrics_host}:{s.metrics_port}"
            raise StartupError(
                f"METRICS_HOST/METRICS_PORT: cannot listen on {where}: {exc}"
            ) from exc
        services.start_soon(self._refresh_gauges)

    async def _startup_checks(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        # Each check names its dependency; StartupError says "<name>: <last error>".
        database = f"PostgreSQL at {redacted_url(self.settings.database_url)}"
        await _retry_until(deadline, database, self._check_database)
        await _retry_until(deadline, self.handler.name, self.handler.check)

    async def _check_database(self) -> None:
        try:
            await self.db.fetch("SELECT 1 FROM outbox LIMIT 0")
        except Exception as exc:
            if isinstance(exc, asyncpg.UndefinedTableError):
                raise RuntimeError(
                    "table outbox does not exist: run the migrations (alembic upgrade heads)"
                ) from exc
            raise

    # -- the main loop ---------------------------------------------------------------------

    async def _work(self, acker: Acknowledger) -> None:
        s = self.settings
        async with anyio.create_task_group() as batches:
            self._batches_scope = batches.cancel_scope
            await self._dispatch(batches, acker)
            grace_end = anyio.current_time() + (0 if self._force else s.shutdown_grace_seconds)
            batches.cancel_scope.deadline = min(batches.cancel_scope.deadline, grace_end)
        with anyio.move_on_after(0 if self._force else FINAL_WRITE_SECONDS):
            await acker.drain()  # outcomes of batches cancelled while their ack was queued
        abandoned = [m for b in self._in_flight if not b.decided for m in b.messages]
        if abandoned:
            log_event(log, logging.WARNING, "worker.grace_expired", messages=len(abandoned))
            reason = "worker stopped before the handler finished"
            await self._final_write(
                acker, Acks(retried=[(m, Retry(reason, delay=0.0)) for m in abandoned])
            )

    async def _final_write(self, acker: Acknowledger, acks: Acks) -> None:
        """Hand outcomes to the acker during a stop, waiting a bounded time (none if forced)."""
        with anyio.move_on_after(0 if self._force else FINAL_WRITE_SECONDS):
            await acker.submit(acks)

    async def _dispatch(self, batches: anyio.abc.TaskGroup, acker: Acknowledger) -> None:
        s = self.settings
        db_delay = 0.05
        while not self._stopping.is_set():
            room = s.max_in_flight - self._in_flight_count
            if room <= 0:
                self._room = anyio.Event()
                await self._room.wait()
                continue
            pause = self._transport_paused_until - time.monotonic()
            if pause > 0:
                with anyio.move_on_after(pause):
                    await self._stopping.wait()
                continue
            claimed: list[ClaimedMessage] = []
            try:
                with anyio.CancelScope() as self._claim_scope:
                    claimed = await claim_batch(
                        self.db,
                        limit=min(s.batch_size, room),
                        lock_seconds=s.lock_seconds,
                        worker_id=s.worker_id,
                        include_type_prefix=s.include,
                        exclude_type_prefix=s.exclude,
                    )
            except Exception as exc:
                self._database_failed(exc)
                with anyio.move_on_after(db_delay):
                    await self._stopping.wait()
                db_delay = min(db_delay * 2, 5.0)
                continue
            finally:
                self._claim_scope = None
            db_delay = 0.05
            if self._stopping.is_set():  # claimed during the stop: hand back, not started
                if claimed:
                    await self._final_write(acker, Acks(released=[(m, None) for m in claimed]))
                break
            self._database_ok()
            if not claimed:
                await self.wakeup.wait(s.poll_interval_ms / 1000)
                continue
            self.metrics.count(self.metrics.claimed, claimed)
            batch = _Batch(claimed, time.monotonic())
            self._in_flight.add(batch)
            self._in_flight_count += len(claimed)
            batches.start_soon(self._handle, batch, acker)

    async def _handle(self, batch: _Batch, acker: Acknowledger) -> None:
        messages = batch.messages
        started = time.monotonic()
        timeout = self.settings.handler_timeout_seconds
        own_timeouts = bool(getattr(self.handler, "enforces_timeouts", False))
        limit = timeout + BACKSTOP_MARGIN_SECONDS if own_timeouts else timeout
        outcomes: Sequence[Outcome] | None = None
        try:
            with anyio.move_on_after(limit) as scope:
                outcomes = await self.handler.handle_batch(messages)
            if scope.cancelled_caught or outcomes is None:
                error = f"handler timed out after {limit:g}s"
                acks = Acks(retried=[(m, Retry(error)) for m in messages])
            else:
                acks = self._sort(messages, outcomes)
        except TransportUnavailable as exc:
            hold = self._transport_failed(exc)
            acks = Acks(released=[(m, hold) for m in messages])
        except anyio.get_cancelled_exc_class() as exc:
            if _really_cancelled():
                raise
            acks = self._failed(messages, exc)  # a stray CancelledError from handler code
        except Exception as exc:
            acks = self._failed(messages, exc)
        elapsed = time.monotonic() - started
        # Durations appear in per-message log lines: published ones only at DEBUG.
        logged = acks.messages() if log.isEnabledFor(logging.DEBUG) else _not_published(acks)
        acks.duration_ms = dict.fromkeys((m.id for m in logged), round(elapsed * 1000, 2))
        for message_type in {m.type for m in messages}:
            self.metrics.handle_seconds.labels(message_type).observe(elapsed)
        batch.decided = True
        await acker.submit(acks)
        self._in_flight.discard(batch)
        self._in_flight_count -= len(messages)
        self._room.set()
        log_event(
            log,
            logging.DEBUG,
            "batch.done",
            size=len(messages),
            first_id=messages[0].id,
            duration_ms=round(elapsed * 1000, 2),
        )

    def _failed(self, messages: Sequence[ClaimedMessage], exc: BaseException) -> Acks:
        log_event(
            log,
            logging.ERROR,
            "handler.failed",
            batch=len(messages),
            first_id=messages[0].id,
            error=describe_error(exc),
        )
        return Acks(retried=[(m, Retry(describe_error(exc))) for m in messages])

    def _sort(self, messages: Sequence[ClaimedMessage], outcomes: Sequence[Outcome]) -> Acks:
        """Outcomes to acks, made safe to write whatever the handler returned."""
        acks = Acks()
        if len(outcomes) != len(messages):
            error = f"handler returned {len(outcomes)} outcomes for {len(messages)} messages"
            acks.retried = [(m, Retry(error)) for m in messages]
            return acks
        delivered = False
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                acks.published.append(message)
                delivered = True
            elif isinstance(outcome, GiveUp):
                acks.dead.append((message, str(outcome.error)))
            elif isinstance(outcome, Retry):
                acks.retried.append((message, Retry(str(outcome.error), _delay(outcome.delay))))
            else:
                acks.retried.append((message, Retry(f"not an outcome: {outcome!r}")))
        if delivered:
            self._transport_ok()
        return acks

    # -- background tasks ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        s = self.settings
        interval = s.lock_seconds / 3
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            due = [
                m
                for b in self._in_flight
                if now - b.claimed_at >= interval and not b.decided
                for m in b.messages
                if m.id not in b.lost
            ]
            if not due:
                continue
            try:
                result = await extend_lease(
                    self.db, due, worker_id=s.worker_id, lock_seconds=s.lock_seconds
                )
            except Exception as exc:
                self._database_failed(exc)
                continue
            if not result.lost:
                continue
            for batch in self._in_flight:
                batch.lost.update(m.id for m in batch.messages if m.id in result.lost)
            report_lost(self.metrics, result, due, "heartbeat")

    async def _reaper(self) -> None:
        s = self.settings
        while True:
            try:
                while True:
                    reaped = await reap_expired_locks(
                        self.db, max_attempts=s.max_attempts, limit=REAP_LIMIT
                    )
                    self.metrics.reaped.labels("requeued").inc(len(reaped.requeued))
                    self.metrics.reaped.labels("dead").inc(len(reaped.dead))
                    if reaped.requeued:
                        self.wakeup.wake()
                        log_event(
                            log,
                            logging.WARNING,
                            "lease.reaped",
                            requeued=len(reaped.requeued),
                            ids=_some(reaped.requeued),
                        )
                    for id_ in sorted(reaped.dead):
                        log_event(log, logging.WARNING, "message.dead", id=id_, reason="reaped")
                    if len(reaped.requeued) + len(reaped.dead) < REAP_LIMIT:
                        break
            except Exception as exc:
                self._database_failed(exc)
            await anyio.sleep(s.reap_interval_seconds)

    async def _refresh_gauges(self) -> None:
        m = self.metrics
        while True:
            if self.db is not None and self._ready:
                try:
                    gauges = await table_gauges(self.db)
                    m.pending.set(gauges.pending)
                    m.in_progress.set(gauges.in_progress)
                    m.dead_rows.set(gauges.dead)
                    m.oldest_pending_age.set(gauges.oldest_claimable_age or 0.0)
                except Exception as exc:
                    self._database_failed(exc)
            await anyio.sleep(GAUGE_REFRESH_SECONDS if self._ready else 0.5)

    # -- health state ------------------------------------------------------------------------

    def _database_failed(self, exc: BaseException) -> None:
        error = describe_error(exc)
        if error != self._database_error:
            log_event(log, logging.WARNING, "database.unavailable", error=error)
        self._database_error = error

    def _database_ok(self) -> None:
        if self._database_error is not None:
            log_event(log, logging.INFO, "database.recovered")
        self._database_error = None

    def _transport_failed(self, exc: TransportUnavailable) -> float:
        """Pause claiming; return the pause (also how long the batch is held back).

        Failures of batches that were already in flight when a pause began do not lengthen
        it: the delay grows once per failed try after a pause, not per failing batch.
        """
        now = time.monotonic()
        if now >= self._transport_paused_until:
            self._transport_failures += 1
            ceiling = min(
                self.settings.transport_retry_max_seconds,
                0.5 * 2 ** min(self._transport_failures - 1, 20),
            )
            pause = random.uniform(ceiling / 2, ceiling)
            self._transport_paused_until = now + pause
            self._transport_error = describe_error(exc.__cause__ or exc)
            log_event(
                log,
                logging.WARNING,
                "transport.unavailable",
                handler=self.handler.name,
                error=self._transport_error,
                retry_in_s=round(pause, 2),
            )
        return max(0.0, self._transport_paused_until - now)

    def _transport_ok(self) -> None:
        if self._transport_failures:
            log_event(log, logging.INFO, "transport.recovered", handler=self.handler.name)
        self._transport_failures = 0
        self._transport_error = None
        self._transport_paused_until = 0.0


def _not_published(acks: Acks) -> list[ClaimedMessage]:
    return [*(m for m, _ in acks.dead), *(m for m, _ in acks.retried)]


def _delay(delay: float | None) -> float | None:
    """A handler's retry delay, made storable: NaN or negative → the backoff policy."""
    if delay is None:
        return None
    try:
        seconds = float(delay)
    except (TypeError, ValueError):
        return None
    if not seconds >= 0:  # NaN, negative
        return None
    return min(seconds, MAX_DELAY_SECONDS)


def _really_cancelled() -> bool:
    """Whether this task is being cancelled (not merely handed a stray CancelledError)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _retry_until(deadline: float, what: str, check: Callable[[], Awaitable[None]]) -> None:
    delay = 0.2
    while True:
        try:
            await check()
            return
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise StartupError(f"{what}: {describe_error(exc)}") from exc
            log_event(log, logging.WARNING, "startup.waiting", on=what, error=describe_error(exc))
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _some(ids: frozenset[int], limit: int = 20) -> str:
    shown = sorted(ids)[:limit]
    return ",".join(map(str, shown)) + (",..." if len(ids) > limit else "")
