"""Run the dashboard under uvicorn (what ``outbox dashboard`` calls)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from outbox.dashboard.app import DashboardConfig, create_app
from outbox.dashboard.security import Guard
from outbox.primitives.extras import requires_extra
from outbox.primitives.logs import log_event
from outbox.storage.pool import create_pool

with requires_extra("dashboard"):
    import uvicorn

__all__ = ["allowed_hosts_for", "serve"]

log = logging.getLogger("outbox.dashboard")

APPLICATION_NAME = "outbox-dashboard"


def allowed_hosts_for(host: str) -> tuple[str, ...]:
    """The ``Host`` headers to answer when bound to ``host``: loopback names on a loopback
    address (a web page elsewhere cannot reach it through DNS rebinding), else any."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return ("*",)
    return ("127.0.0.1", "localhost", "[::1]", "::1", host)


def serve(
    database_url: str,
    guard: Guard,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    connect_timeout: float = 10.0,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking). The database is an asyncpg pool of at most
    four connections, opened lazily."""

    @asynccontextmanager
    async def open_db() -> AsyncIterator[Any]:
        pool = await create_pool(
            database_url, application_name=APPLICATION_NAME, connect_timeout=connect_timeout
        )
        try:
            yield pool
        finally:
            await pool.close()

    config = DashboardConfig(open_db=open_db, guard=guard, allowed_hosts=allowed_hosts_for(host))
    log_event(
        log,
        logging.INFO,
        "dashboard.start",
        host=host,
        port=port,
        read_only=guard.read_only,
        token_for_viewing=guard.require_token_for_viewing,
    )
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        access_log=False,  # URLs carry filters and dedupe keys: operators' data
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
