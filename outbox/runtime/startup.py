"""A worker's start-up: the metrics server first, then every dependency, checked with retries.

Each check is retried with growing waits until ``STARTUP_TIMEOUT_SECONDS``; then
:class:`~outbox.primitives.errors.StartupError` names the dependency and its last error
(``PostgreSQL at postgresql://...: ...``, or the handler's ``name``), which the runner turns
into exit code 3.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio.abc
import asyncpg

from outbox.primitives.delays import GrowingDelay
from outbox.primitives.errors import StartupError, error_text
from outbox.primitives.logs import log_event
from outbox.primitives.urls import redacted_url
from outbox.runtime.handler import Handler
from outbox.runtime.metrics import WorkerMetrics, serve_http
from outbox.runtime.settings import WorkerSettings
from outbox.storage.pool import refused_ssl

__all__ = ["check_dependencies", "start_metrics_server"]

log = logging.getLogger("outbox.worker")


async def start_metrics_server(
    services: anyio.abc.TaskGroup,
    settings: WorkerSettings,
    metrics: WorkerMetrics,
    readiness: Callable[[], str | None],
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` in ``services``; StartupError if the
    port cannot be opened."""
    try:
        await services.start(
            serve_http, settings.metrics_host, settings.metrics_port, metrics, readiness
        )
    except OSError as exc:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        raise StartupError(f"METRICS_HOST/METRICS_PORT: cannot listen on {where}: {exc}") from exc


async def check_dependencies(db: asyncpg.Pool, settings: WorkerSettings, handler: Handler) -> None:
    """Wait until the outbox table answers and ``handler.check()`` passes."""
    deadline = time.monotonic() + settings.startup_timeout_seconds

    database = f"PostgreSQL at {redacted_url(settings.database_url)}"

    async def check_database() -> None:
        try:
            await db.fetch("SELECT 1 FROM outbox LIMIT 0")
        except asyncpg.UndefinedTableError as exc:
            raise RuntimeError(
                "table outbox does not exist: run the migrations (alembic upgrade heads)"
            ) from exc
        except (asyncpg.ClientConfigurationError, ConnectionError) as exc:
            if isinstance(exc, ConnectionError) and not refused_ssl(exc):
                raise
            # DATABASE_URL asks for what this client or server cannot do: no retry mends it.
            raise StartupError(f"{database}: {error_text(exc)} (check DATABASE_URL)") from exc
        if settings.ordered:
            try:
                await db.fetch("SELECT 1 FROM outbox_keys, outbox_key_leases LIMIT 0")
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
                # Not a wait for a migration in progress: an outbox of an older version.
                raise StartupError(
                    f"{database}: ORDERING=key needs tables outbox_keys and outbox_key_leases"
                    " (migrations outbox_0005 to outbox_0007): run the migrations"
                    " (outbox migrate), or set ORDERING=none"
                ) from exc

    await _retry_until(deadline, database, check_database)
    await _retry_until(deadline, handler.name, handler.check)


async def _retry_until(deadline: float, what: str, check: Callable[[], Awaitable[None]]) -> None:
    """Run ``check`` until it passes; past ``deadline``, raise :class:`StartupError` (at once
    when ``check`` raises one)."""
    delays = GrowingDelay(0.2, 5.0)
    while True:
        try:
            await check()
            return
        except StartupError:
            raise
        except Exception as exc:
            delay = delays.next()
            if time.monotonic() + delay > deadline:
                raise StartupError(f"{what}: {error_text(exc)}") from exc
            log_event(log, logging.WARNING, "startup.waiting", on=what, error=error_text(exc))
            await anyio.sleep(delay)
