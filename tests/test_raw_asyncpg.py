"""The storage calls on a raw asyncpg pool (the worker's hot path) behave as on SQLAlchemy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import (
    NewMessage,
    Status,
    claim_batch,
    enqueue_many,
    extend_lease,
    mark_dead,
    mark_published,
    reap_expired_locks,
    release,
    reschedule,
    stats,
)
from outbox.primitives.urls import libpq_dsn
from outbox.storage.pool import create_pool
from outbox.storage.stats import table_gauges

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(engine: AsyncEngine, database_url: str) -> AsyncIterator[Any]:
    raw = await create_pool(database_url)
    try:
        yield raw
    finally:
        await raw.close()


async def test_a_full_cycle_on_the_raw_pool(engine: AsyncEngine, pool: Any) -> None:
    async with engine.begin() as conn:
        ids = await enqueue_many(
            conn,
            [NewMessage("message.created", {"n": n, "ü": [1, None]}, key="k") for n in range(5)]
            + [NewMessage("document.preprocess.v1", {"d": 1})],
        )
    claimed = await claim_batch(
        pool, limit=10, lock_seconds=30, worker_id="w", exclude_type_prefix="document."
    )
    assert [m.id for m in claimed] == ids[:5]
    assert claimed[0].payload == {"n": 0, "ü": [1, None]}
    assert claimed[0].key == "k" and claimed[0].attempts == 1

    first, second, third, fourth, fifth = claimed
    assert (await extend_lease(pool, [first], worker_id="w", lock_seconds=60)).ok
    assert (await mark_published(pool, [first], worker_id="w")).applied == {first.id}
    assert (await mark_published(pool, [first], worker_id="w")).lost == {first.id}  # fenced
    retried = await reschedule(pool, [second], worker_id="w", error="e", max_attempts=1)
    assert retried.dead == {second.id}
    assert (await mark_dead(pool, [third], worker_id="w", error="bad")).ok
    assert (await release(pool, [fourth], worker_id="w")).ok
    assert (await release(pool, [fifth], worker_id="someone-else")).lost == {fifth.id}

    summary = await stats(pool)
    assert summary.by_status == {
        Status.PENDING: 2,
        Status.IN_PROGRESS: 1,
        Status.PUBLISHED: 1,
        Status.DEAD: 2,
    }
    gauges = await table_gauges(pool)
    assert (gauges.pending, gauges.in_progress, gauges.dead) == (2, 1, 2)
    assert (await reap_expired_locks(pool)).requeued == frozenset()


async def test_a_pool_that_disables_jit_connects_with_jit_off(database_url: str) -> None:
    """The workers' pools: a claim whose cost estimate crossed jit_above_cost spent 150 ms
    to seconds compiling, every claim (the held-snapshot bench, after an ANALYZE)."""
    plain = await asyncpg.connect(libpq_dsn(database_url))
    server = await create_pool(database_url, max_size=1)
    without = await create_pool(database_url, max_size=1, disable_jit=True)
    try:
        assert await without.fetchval("SHOW jit") == "off"
        # By default, left as the server has it.
        assert await server.fetchval("SHOW jit") == await plain.fetchval("SHOW jit")
    finally:
        await plain.close()
        await server.close()
        await without.close()
