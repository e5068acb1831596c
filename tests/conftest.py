"""Test rig: real PostgreSQL and Redis, a fresh migrated database per test module.

Servers come from ``DATABASE_URL`` / ``REDIS_URL`` when they answer, else throwaway local
ones (``devservers``). A template database is migrated once with Alembic (the outbox
and the reference documents tables); each test
module gets its own copy, and each test starts from an empty outbox table.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devservers import LocalServices, local_services
from outbox import async_database_url
from outbox.primitives.urls import libpq_dsn
from outbox.storage.migrate import upgrade


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def services() -> Iterator[LocalServices]:
    with local_services() as found:
        yield found


def database_url_for(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name`` instead."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def admin(server_url: str, *statements: str) -> None:
    """Run maintenance statements (CREATE/DROP DATABASE) outside any transaction."""

    async def go() -> None:
        conn = await asyncpg.connect(libpq_dsn(server_url))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


def query(database_url: str, sql: str) -> list[tuple[object, ...]]:
    """Run one statement in its own connection (autocommit); its rows as tuples."""

    async def go() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(libpq_dsn(database_url))
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(go())


def create_database(server_url: str, prefix: str, template: str | None = None) -> str:
    """Create a uniquely named database and return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin(server_url, f'CREATE DATABASE "{name}"{clause}')
    return name


def drop_database(server_url: str, name: str) -> None:
    admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(services: LocalServices) -> Iterator[str]:
    """A database of this test's own with nothing in it (not migrated)."""
    name = create_database(services.database_url, "t_empty")
    try:
        yield database_url_for(services.database_url, name)
    finally:
        drop_database(services.database_url, name)


@pytest.fixture(scope="session")
def template_database(services: LocalServices) -> Iterator[str]:
    name = create_database(services.database_url, "outbox_tpl")
    try:
        upgrade(database_url_for(services.database_url, name), documents=True)
        yield name
    finally:
        drop_database(services.database_url, name)


@pytest.fixture(scope="module")
def database_url(
    services: LocalServices, template_database: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database of this test module's own, migrated to head."""
    module = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:30]
    name = create_database(services.database_url, f"t_{module}", template=template_database)
    try:
        yield database_url_for(services.database_url, name)
    finally:
        drop_database(services.database_url, name)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on the module's database, with the outbox table emptied first.

    Teardown asserts that the test returned every pooled connection.
    """
    eng = create_async_engine(async_database_url(database_url), pool_size=10)
    async with eng.begin() as conn:
        await conn.exec_driver_sql(
            "TRUNCATE outbox, outbox_keys, outbox_key_leases RESTART IDENTITY"
        )
    try:
        yield eng
        assert eng.pool.checkedout() == 0, "a test left a connection checked out"  # type: ignore[attr-defined]
    finally:
        await eng.dispose()
