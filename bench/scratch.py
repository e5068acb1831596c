"""A scratch database for a benchmark: migrated, and dropped afterwards.

``run_with_scratch_database(bench)`` finds a PostgreSQL (``DATABASE_URL`` if it answers,
else a throwaway local server), creates a database, migrates it, runs ``await bench(url)``
with its plain ``postgresql://`` URL, and drops the database whatever happens. With
``documents=True`` the migration also creates the reference ``documents`` /
``document_chunks`` tables (``outbox.storage.migrate.upgrade(url, documents=True)``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from devservers import local_services
from outbox import async_database_url
from outbox.primitives.urls import libpq_dsn
from outbox.storage.migrate import upgrade


async def _in_scratch_database(
    server_url: str, bench: Callable[[str], Awaitable[None]], documents: bool
) -> None:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(libpq_dsn(server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = libpq_dsn(async_database_url(server_url).set(database=name))
    try:
        await asyncio.to_thread(upgrade, url, documents=documents)
        await bench(url)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def run_with_scratch_database(
    bench: Callable[[str], Awaitable[None]], *, documents: bool = False
) -> None:
    """Run ``bench`` against a fresh, migrated database (with ``documents``, also the
    reference documents tables); see the module docstring."""
    with local_services(redis=False) as services:
        asyncio.run(_in_scratch_database(services.database_url, bench, documents))
