"""A worker's health: what ``/readyz`` reports, and the pause after a transport failure.

Every task reports here: database errors (any statement), transport failures (a handler's
:class:`~outbox.primitives.errors.TransportUnavailable`, or a failed idle check) and
successes. The transport counts as unavailable from a failure until the next success (a
batch delivered, or an idle check passing). State changes are logged once
(``database.unavailable``/``database.recovered``, ``transport.unavailable``/
``transport.recovered``), not on every failure.
"""

from __future__ import annotations

import logging
import time

from outbox.primitives.delays import GrowingDelay
from outbox.primitives.errors import error_text
from outbox.primitives.logs import log_event

__all__ = ["Health"]

log = logging.getLogger("outbox.worker")


class Health:
    """Readiness and the transport pause of one worker (``transport`` names what it talks to)."""

    def __init__(self, transport: str, *, transport_retry_max_seconds: float) -> None:
        self.transport = transport
        self.starting = True
        self.stopping = False
        self.database_error: str | None = None
        self.transport_error: str | None = None
        self.transport_paused_until = 0.0
        self.transport_reported_at = time.monotonic()
        """When a batch or a check last told anything about the transport."""
        self._transport_delay = GrowingDelay(0.5, transport_retry_max_seconds, jitter=True)

    def readiness(self) -> str | None:
        """``None`` when claiming normally, else why not (for ``/readyz``)."""
        if self.stopping:
            return "stopping"
        if self.starting:
            return "starting"
        if self.database_error:
            return f"database unavailable: {self.database_error}"
        if self.transport_error is not None:
            return f"{self.transport} unavailable: {self.transport_error}"
        return None

    def transport_quiet_for(self) -> float:
        """Seconds since a batch or a check last reported on the transport."""
        return time.monotonic() - self.transport_reported_at

    def database_failed(self, exc: BaseException) -> None:
        error = error_text(exc)
        if error != self.database_error:
            log_event(log, logging.WARNING, "database.unavailable", error=error)
        self.database_error = error

    def database_ok(self) -> None:
        if self.database_error is not None:
            log_event(log, logging.INFO, "database.recovered")
        self.database_error = None

    def transport_pause(self) -> float:
        """Seconds left of the current transport pause (0 when not paused)."""
        return max(0.0, self.transport_paused_until - time.monotonic())

    def transport_failed(self, error: str | BaseException) -> float:
        """Pause claiming; return the pause (also how long the failed batch is held back).

        Failures of batches that were already in flight when a pause began do not lengthen
        it: the pause grows once per failed try after a pause, not per failing batch.
        """
        now = time.monotonic()
        self.transport_reported_at = now
        if now >= self.transport_paused_until:
            pause = self._transport_delay.next()
            self.transport_paused_until = now + pause
            self.transport_error = (
                error if isinstance(error, str) else error_text(error.__cause__ or error)
            )
            log_event(
                log,
                logging.WARNING,
                "transport.unavailable",
                handler=self.transport,
                error=self.transport_error,
                retry_in_s=round(pause, 2),
            )
        return self.transport_pause()

    def transport_ok(self) -> None:
        self.transport_reported_at = time.monotonic()
        if self._transport_delay.failures:
            log_event(log, logging.INFO, "transport.recovered", handler=self.transport)
        self._transport_delay.reset()
        self.transport_error = None
        self.transport_paused_until = 0.0
