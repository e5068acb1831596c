"""The dispatch loop: claim → handle → acknowledge, around any
:class:`~outbox.runtime.handler.Handler`.

One :class:`Worker` per process. Its dispatch loop claims up to ``min(BATCH_SIZE, free
capacity)`` rows and starts a task for the batch; it claims again at once after a non-empty
batch, and after an empty one waits for a notification or ``POLL_INTERVAL_MS``. At most
``CONCURRENCY`` messages are in flight (claimed and not yet acknowledged). Each batch task
calls the handler under ``HANDLER_TIMEOUT_SECONDS`` and submits the resulting acks
(:mod:`~outbox.runtime.outcomes`) to the :class:`~outbox.runtime.acknowledger.Acknowledger`.
Beside it run the acknowledger, the wake-up listener, the :mod:`~outbox.runtime.maintenance`
tasks (heartbeat, reaper, the idle transport check) and, with metrics on, the HTTP server
(up before the :mod:`~outbox.runtime.startup` checks, so ``/healthz`` answers during
start-up).

Failures: a database error anywhere is reported to :class:`~outbox.runtime.health.Health`
and retried with growing delays (the pool reconnects; every statement has
``DATABASE_TIMEOUT_SECONDS``); a handler's
:class:`~outbox.primitives.errors.TransportUnavailable` hands its batch back uncounted, held
for the transport pause, and claiming pauses until a batch goes through.

Shutdown (:meth:`Worker.stop`): start-up checks and idle waits end at once; a claim under way
gets two seconds; a batch claimed during the stop is handed back uncounted; in-flight batches
get ``SHUTDOWN_GRACE_SECONDS``, then are cancelled and rescheduled due at once (their delivery
may have started, so the attempt stays counted). ``stop(force=True)`` (a second signal) cuts
every remaining wait.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import anyio
import anyio.abc
import asyncpg

from outbox.primitives.constants import CLAIM_GRACE_SECONDS, FINAL_WRITE_SECONDS
from outbox.primitives.delays import GrowingDelay
from outbox.primitives.logs import log_event
from outbox.runtime.acknowledger import Acknowledger, Acks
from outbox.runtime.handler import Handler, Retry
from outbox.runtime.health import Health
from outbox.runtime.inflight import Batch, InFlight
from outbox.runtime.maintenance import Maintenance
from outbox.runtime.metrics import WorkerMetrics
from outbox.runtime.outcomes import run_handler
from outbox.runtime.settings import WorkerSettings
from outbox.runtime.startup import check_dependencies, start_metrics_server
from outbox.runtime.wakeup import Wakeup
from outbox.storage.claims import claim_batch
from outbox.storage.frontier import ClaimFrontier
from outbox.storage.pool import create_pool

__all__ = ["Worker"]

log = logging.getLogger("outbox.worker")


class Worker:
    """Runs ``handler`` over the outbox rows selected by ``settings`` until :meth:`stop`."""

    def __init__(
        self, handler: Handler, settings: WorkerSettings, *, metrics: WorkerMetrics | None = None
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.backoff = settings.backoff()
        self.health = Health(
            handler.name, transport_retry_max_seconds=settings.transport_retry_max_seconds
        )
        self.in_flight = InFlight(settings.max_in_flight)
        self.wakeup = Wakeup(
            settings.database_url,
            listen=settings.listens,
            application_name=f"outbox-listen {settings.worker_id}",
        )
        self._stopping = anyio.Event()
        self._force = False
        self._after_key = ""  # where an ordered claim's key scan starts: see claim_batch
        self._frontier = ClaimFrontier(
            settings.claim_lookback_seconds, settings.claim_full_walk_seconds
        )
        self._stop_scopes: set[anyio.CancelScope] = set()
        self._claim_scope: anyio.CancelScope | None = None
        self._batches_scope: anyio.CancelScope | None = None

    def stop(self, *, force: bool = False) -> None:
        """Begin a graceful stop; ``force`` also ends the grace period and final waits now."""
        if not self._stopping.is_set():
            log_event(log, logging.INFO, "worker.stopping", in_flight=self.in_flight.count)
        self._stopping.set()
        self.health.stopping = True
        self.wakeup.wake()
        self.in_flight.wake()
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
        return self.health.readiness()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Check dependencies, then work until :meth:`stop`; returns after a clean stop.

        Raises :class:`~outbox.primitives.errors.StartupError` when a dependency stays
        unreachable at start (or the metrics port cannot be opened). A stop during start-up
        returns cleanly.
        """
        s = self.settings
        db = await create_pool(
            s.database_url,
            max_size=4,
            application_name=f"outbox {s.worker_id}",
            statement_cache_size=0 if s.pgbouncer_transaction_mode else 100,
            command_timeout=s.database_timeout_seconds,
            # PgBouncer refuses the startup parameter: set jit = off for the role there.
            disable_jit=not s.pgbouncer_transaction_mode,
        )
        maintenance = Maintenance(
            db,
            s,
            in_flight=self.in_flight,
            health=self.health,
            metrics=self.metrics,
            wakeup=self.wakeup,
        )
        acker = Acknowledger(
            db,
            worker_id=s.worker_id,
            max_attempts=s.max_attempts,
            metrics=self.metrics,
            on_database_error=self.health.database_failed,
            hold_keys=s.hold_keys,
        )
        try:
            async with anyio.create_task_group() as services:
                if s.metrics_port is not None:
                    await start_metrics_server(services, s, self.metrics, self.readiness)
                    services.start_soon(maintenance.run_gauges)
                with self._stoppable():
                    await check_dependencies(db, s, self.handler)
                if self._stopping.is_set():
                    services.cancel_scope.cancel()
                    return
                for task in (
                    acker.run,
                    self.wakeup.run,
                    maintenance.run_heartbeat,
                    maintenance.run_reaper,
                ):
                    services.start_soon(task)
                services.start_soon(maintenance.run_transport_check, self.handler)
                self.health.starting = False
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
                    ordering=s.ordering,
                    listen=s.listens,
                )
                task_status.started()
                await self._work(db, acker)
                if not self._stopping.is_set():
                    raise RuntimeError("the worker loop ended without a stop request")
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.handler.aclose()
                with anyio.move_on_after(FINAL_WRITE_SECONDS) as closing:
                    await db.close()
                if closing.cancelled_caught:
                    db.terminate()
        log_event(log, logging.INFO, "worker.stopped", worker_id=s.worker_id)

    def _stoppable(self) -> anyio.CancelScope:
        """A cancel scope that :meth:`stop` cancels (for waits that must not delay a stop)."""
        scope = anyio.CancelScope()
        self._stop_scopes.add(scope)
        if self._stopping.is_set():
            scope.cancel()
        return scope

    async def _work(self, db: asyncpg.Pool, acker: Acknowledger) -> None:
        """Dispatch until stopped, then give in-flight batches their grace and write back
        whatever their handlers never decided."""
        async with anyio.create_task_group() as batches:
            self._batches_scope = batches.cancel_scope
            await self._dispatch(db, batches, acker)
            grace = 0 if self._force else self.settings.shutdown_grace_seconds
            deadline = anyio.current_time() + grace
            batches.cancel_scope.deadline = min(batches.cancel_scope.deadline, deadline)
        with anyio.move_on_after(0 if self._force else FINAL_WRITE_SECONDS):
            await acker.drain()  # outcomes of batches cancelled while their ack was queued
        abandoned = self.in_flight.undecided()
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

    async def _dispatch(
        self, db: asyncpg.Pool, batches: anyio.abc.TaskGroup, acker: Acknowledger
    ) -> None:
        s = self.settings
        database_delay = GrowingDelay(0.05, 5.0)
        while not self._stopping.is_set():
            capacity = self.in_flight.free_capacity()
            if capacity <= 0:
                with self._waiting("capacity"):
                    await self.in_flight.wait_for_capacity()
                continue
            pause = self.health.transport_pause()
            if pause > 0:
                with anyio.move_on_after(pause):
                    await self._stopping.wait()
                continue
            try:
                with anyio.CancelScope() as self._claim_scope, self.metrics.claim_seconds.time():
                    claimed = await claim_batch(
                        db,
                        limit=min(s.batch_size, capacity),
                        lock_seconds=s.lock_seconds,
                        worker_id=s.worker_id,
                        include_type_prefix=s.include,
                        exclude_type_prefix=s.exclude,
                        ordered=s.ordered,
                        after_key=self._after_key,
                        hold_keys=s.hold_keys,
                        frontier=self._frontier,
                    )
            except Exception as exc:
                self.health.database_failed(exc)
                with anyio.move_on_after(database_delay.next()):
                    await self._stopping.wait()
                continue
            finally:
                self._claim_scope = None
            database_delay.reset()
            if self._stopping.is_set():  # claimed during the stop: hand back, not started
                if claimed:
                    await self._final_write(acker, Acks(released=[(m, None) for m in claimed]))
                break
            self.health.database_ok()
            if not claimed:
                with self._waiting("idle"):
                    await self.wakeup.wait(s.poll_interval_ms / 1000)
                continue
            self.metrics.count(self.metrics.claimed, claimed)
            self._after_key = max((m.key for m in claimed if m.key is not None), default="")
            batches.start_soon(self._handle, self.in_flight.add(claimed), acker)

    @contextlib.contextmanager
    def _waiting(self, reason: str) -> Iterator[None]:
        """Count the time the claim loop spends in this block as waiting for ``reason``."""
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.metrics.dispatch_wait_seconds.labels(reason).inc(elapsed)

    async def _handle(self, batch: Batch, acker: Acknowledger) -> None:
        messages = batch.messages
        started = time.monotonic()
        acks = await run_handler(
            self.handler,
            messages,
            time_limit=self.settings.handler_timeout_seconds,
            max_attempts=self.settings.max_attempts,
            backoff=self.backoff,
            health=self.health,
        )
        elapsed = time.monotonic() - started
        acks.record_duration(elapsed, all_messages=log.isEnabledFor(logging.DEBUG))
        for message_type in {m.type for m in messages}:
            self.metrics.handle_seconds.labels(message_type).observe(elapsed)
        batch.decided = True
        await acker.submit(acks)
        self.in_flight.remove(batch)
        if self.settings.ordered:
            # The acks freed this batch's keys: what waited behind them is claimable now.
            self.wakeup.wake()
        log_event(
            log,
            logging.DEBUG,
            "batch.done",
            size=len(messages),
            first_id=messages[0].id,
            duration_ms=round(elapsed * 1000, 2),
        )
