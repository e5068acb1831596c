"""A worker's periodic upkeep, each its own task: lease heartbeat, reaper, table gauges.

- **heartbeat**: every third of ``LOCK_SECONDS``, extends the leases of batches running that
  long; a lease found taken (the row was reaped and claimed again) is reported and never
  extended again.
- **reaper**: every ``REAP_INTERVAL_SECONDS``, returns expired leases of crashed workers to
  ``pending`` (or ``dead`` when out of attempts), in statements of at most
  :data:`~outbox.primitives.constants.DEFAULT_REAP_LIMIT` rows.
- **gauges**: with metrics on, refreshes the table gauges every
  :data:`~outbox.primitives.constants.GAUGE_REFRESH_SECONDS`.
- **transport check**: when no batch has reported on the transport for
  ``TRANSPORT_CHECK_SECONDS``, calls the handler's ``check()`` (bounded by
  ``HANDLER_TIMEOUT_SECONDS``), so an outage -- and its end -- shows in ``/readyz`` even
  while no message flows.

A database error is reported to :class:`~outbox.runtime.health.Health` and the task goes on
at its next tick.
"""

from __future__ import annotations

import logging

import anyio

from outbox.primitives.constants import DEFAULT_REAP_LIMIT, GAUGE_REFRESH_SECONDS
from outbox.primitives.logs import log_event
from outbox.runtime.acknowledger import report_lost
from outbox.runtime.handler import Handler
from outbox.runtime.health import Health
from outbox.runtime.inflight import InFlight
from outbox.runtime.metrics import WorkerMetrics
from outbox.runtime.settings import WorkerSettings
from outbox.runtime.wakeup import Wakeup
from outbox.storage.claims import extend_lease, reap_expired_locks, tidy_keys
from outbox.storage.execution import AsyncDB
from outbox.storage.stats import table_gauges

__all__ = ["Maintenance"]

log = logging.getLogger("outbox.worker")


class Maintenance:
    """The periodic tasks of one worker; start each ``run_*`` in the worker's task group."""

    def __init__(
        self,
        db: AsyncDB,
        settings: WorkerSettings,
        *,
        in_flight: InFlight,
        health: Health,
        metrics: WorkerMetrics,
        wakeup: Wakeup,
    ) -> None:
        self.db = db
        self.settings = settings
        self.in_flight = in_flight
        self.health = health
        self.metrics = metrics
        self.wakeup = wakeup

    async def run_heartbeat(self) -> None:
        s = self.settings
        interval = s.lock_seconds / 3
        while True:
            await anyio.sleep(interval)
            due = self.in_flight.due_for_heartbeat(older_than=interval)
            if not due:
                continue
            try:
                result = await extend_lease(
                    self.db, due, worker_id=s.worker_id, lock_seconds=s.lock_seconds
                )
            except Exception as exc:
                self.health.database_failed(exc)
                continue
            if result.lost:
                self.in_flight.mark_lost(result.lost)
                report_lost(self.metrics, result, due, "heartbeat")

    async def run_reaper(self) -> None:
        while True:
            try:
                while await self._reap_once() == DEFAULT_REAP_LIMIT:
                    pass  # a full statement: more may be expired
                if self.settings.ordered:
                    await tidy_keys(self.db, idle_seconds=self.settings.lock_seconds)
            except Exception as exc:
                self.health.database_failed(exc)
            await anyio.sleep(self.settings.reap_interval_seconds)

    async def _reap_once(self) -> int:
        """Reap one statement's worth of expired leases; return how many rows it changed."""
        reaped = await reap_expired_locks(
            self.db,
            max_attempts=self.settings.max_attempts,
            limit=DEFAULT_REAP_LIMIT,
            hold_keys=self.settings.hold_keys,
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
                ids=_first_ids(reaped.requeued),
            )
        for id_ in sorted(reaped.dead):
            log_event(log, logging.WARNING, "message.dead", id=id_, reason="reaped")
        return len(reaped.requeued) + len(reaped.dead)

    async def run_transport_check(self, handler: Handler) -> None:
        interval = self.settings.transport_check_seconds
        limit = self.settings.handler_timeout_seconds
        while True:
            quiet = self.health.transport_quiet_for()
            if quiet < interval or self.health.stopping:
                await anyio.sleep(max(interval - quiet, 0.05))
                continue
            try:
                with anyio.move_on_after(limit) as bound:
                    await handler.check()
            except Exception as exc:
                self.health.transport_failed(exc)
                continue
            if bound.cancelled_caught:
                self.health.transport_failed(f"check timed out after {limit:g}s")
            else:
                self.health.transport_ok()

    async def run_gauges(self) -> None:
        m = self.metrics
        while True:
            if not self.health.starting:
                try:
                    gauges = await table_gauges(self.db)
                    m.pending.set(gauges.pending)
                    m.in_progress.set(gauges.in_progress)
                    m.dead_rows.set(gauges.dead)
                    m.oldest_pending_age.set(gauges.oldest_claimable_age or 0.0)
                except Exception as exc:
                    self.health.database_failed(exc)
            await anyio.sleep(0.5 if self.health.starting else GAUGE_REFRESH_SECONDS)


def _first_ids(ids: frozenset[int], limit: int = 20) -> str:
    """The lowest ``limit`` ids, comma-separated, ``,...`` when there are more."""
    shown = sorted(ids)[:limit]
    return ",".join(map(str, shown)) + (",..." if len(ids) > limit else "")
