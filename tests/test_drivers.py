"""``enqueue`` through every PostgreSQL driver SQLAlchemy users pick: psycopg2, psycopg 3,
pg8000 (sync), asyncpg and psycopg 3 (async), all in the ``dev`` extra. For each: a
rolled-back enqueue leaves no row, a committed one is claimed, and a repeated
``dedupe_key`` returns the first id.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from outbox import claim_batch, enqueue

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SYNC_DRIVERS = ["psycopg2", "psycopg", "pg8000"]
ASYNC_DRIVERS = ["asyncpg", "psycopg_async"]


class _Rollback(Exception):
    pass


def _url(database_url: str, driver: str) -> str:
    url = make_url(database_url).set(drivername=f"postgresql+{driver}")
    return url.render_as_string(hide_password=False)


async def _claimed(engine: AsyncEngine, prefix: str) -> set[int]:
    async with engine.begin() as conn:
        claimed = await claim_batch(
            conn, limit=100, lock_seconds=30, worker_id="drivers", include_type_prefix=prefix
        )
    return {message.id for message in claimed}


def _sync_enqueue(conn: Connection, type_: str, dedupe_key: str | None = None) -> int:
    return enqueue(conn, type_, {"driver": type_}, key="k", dedupe_key=dedupe_key)


async def _async_enqueue(conn: AsyncConnection, type_: str, dedupe_key: str | None = None) -> int:
    return await enqueue(conn, type_, {"driver": type_}, key="k", dedupe_key=dedupe_key)


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
async def test_sync_driver_enqueues_in_the_callers_transaction(
    driver: str, database_url: str, engine: AsyncEngine
) -> None:
    prefix = f"drv.{driver}."
    producer = create_engine(_url(database_url, driver))
    try:
        with pytest.raises(_Rollback), producer.begin() as conn:
            _sync_enqueue(conn, prefix + "rolled-back")
            raise _Rollback
        with producer.begin() as conn:
            committed = _sync_enqueue(conn, prefix + "committed")
        dedupe = uuid.uuid4().hex
        with producer.begin() as conn:
            first = _sync_enqueue(conn, prefix + "deduped", dedupe)
        with producer.begin() as conn:
            again = _sync_enqueue(conn, prefix + "deduped", dedupe)
    finally:
        producer.dispose()
    assert again == first
    assert await _claimed(engine, prefix) == {committed, first}


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_driver_enqueues_in_the_callers_transaction(
    driver: str, database_url: str, engine: AsyncEngine
) -> None:
    prefix = f"drv.{driver}."
    producer = create_async_engine(_url(database_url, driver))
    try:
        with pytest.raises(_Rollback):
            async with producer.begin() as conn:
                await _async_enqueue(conn, prefix + "rolled-back")
                raise _Rollback
        async with producer.begin() as conn:
            committed = await _async_enqueue(conn, prefix + "committed")
        dedupe = uuid.uuid4().hex
        async with producer.begin() as conn:
            first = await _async_enqueue(conn, prefix + "deduped", dedupe)
        async with producer.begin() as conn:
            again = await _async_enqueue(conn, prefix + "deduped", dedupe)
    finally:
        await producer.dispose()
    assert again == first
    assert await _claimed(engine, prefix) == {committed, first}
