"""What the operator commands cost a busy table: purge, dead retry, stats and top.

    python bench/operations.py [--rows 1000000] [--batch 1000]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL. Fills a scratch
database with ``--rows`` published rows in four equal parts (published 40, 30, 20 and 10
days ago, a millisecond apart, as acknowledgements spread them) and ``--rows / 10`` dead
rows that died in one statement, then, while a claimer keeps a small live stream going
(insert 100 rows, claim them with ``claim_batch``, ``mark_published``; cycle after cycle):

* purges the first part with ``outbox.storage.admin.purge`` in batches of ``--batch``;
* the second the same way while another session holds a snapshot open (``pg_dump``, an
  idle transaction or a standby's feedback do that), so deleted rows stay in the index;
* the third the same way again, but with an uncursored statement that starts every batch
  from the oldest row instead of at a cursor (what a naive batched purge does);
* the fourth with one plain ``DELETE`` (what a hand-written retention job does);
* retries every dead row with ``outbox.storage.admin.retry_dead``;
* and first times ``outbox.storage.stats.stats`` (what ``outbox stats`` runs) against
  ``outbox.storage.admin.live_sample`` (one ``outbox top`` sample) on the full table.

For each phase it prints the rows per second, the longest single transaction, and the
claimer's cycle time (p50 / p99 / max) just before and during it: what the live stream
felt. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from measure import percentile
from scratch import run_with_scratch_database

from outbox import claim_batch, mark_published
from outbox.primitives.urls import libpq_dsn
from outbox.storage.admin import DeadFilter, PurgeTarget, live_sample, purge, retry_dead
from outbox.storage.pool import create_pool
from outbox.storage.stats import stats

STREAM_BATCH = 100

FILL_PUBLISHED = """
INSERT INTO outbox (type, key, payload, status, attempts, created_at, published_at)
SELECT 'message.created', 'room-' || (g % 50), '{"body": "hello"}', 'published', 1,
       now() - $1::interval + g * interval '1 millisecond',
       now() - $1::interval + g * interval '1 millisecond'
FROM generate_series(1, $2::int) g
"""
FILL_DEAD = """
INSERT INTO outbox (type, key, payload, status, attempts, created_at, error)
SELECT 'document.preprocess.v1', 'doc-' || g, '{}', 'dead', 10, now() - interval '3 days',
       'sidecar answered 422'
FROM generate_series(1, $1::int) g
"""
# A naive batch: from the oldest row every time, no cursor.
UNCURSORED_PURGE = """
DELETE FROM outbox WHERE id = ANY(ARRAY(
    SELECT id FROM outbox
    WHERE status = 'published' AND published_at < now() - interval '15 days'
    ORDER BY published_at LIMIT $1 FOR UPDATE SKIP LOCKED))
"""
STREAM_INSERT = """
INSERT INTO outbox (type, key, payload)
SELECT 'message.created', 'live', '{"body": "live"}' FROM generate_series(1, $1::int)
"""
PLAIN_DELETE = (
    "DELETE FROM outbox WHERE status = 'published' AND published_at < now() - interval '5 days'"
)


@dataclass
class Claimer:
    """A live stream beside the operation: insert, claim and acknowledge, in cycles."""

    pool: Any
    cycles: list[float] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        while self.running:
            started = time.perf_counter()
            await self.pool.execute(STREAM_INSERT, STREAM_BATCH)
            claimed = await claim_batch(
                self.pool,
                limit=STREAM_BATCH,
                lock_seconds=30,
                worker_id="bench-stream",
                exclude_type_prefix="document.",  # as the chat worker: not the retried rows
            )
            await mark_published(self.pool, claimed, worker_id="bench-stream")
            self.cycles.append((time.perf_counter() - started) * 1000)


@dataclass
class Beside:
    """What :func:`beside_stream` saw: the operation's result and seconds, and the claimer's
    cycle times (ms) just before the operation (``alone``) and while it ran."""

    result: Any
    seconds: float
    alone: list[float]
    meanwhile: list[float]

    def stream(self) -> str:
        return (
            f"  live stream just before: cycle {cycles_text(self.alone)}"
            f"\n  live stream meanwhile:   cycle {cycles_text(self.meanwhile)}"
        )


async def beside_stream(pool: Any, operation: Callable[[], Awaitable[Any]]) -> Beside:
    """VACUUM ANALYZE (as autovacuum would have by then), run a :class:`Claimer` for 2 s
    alone, then run ``operation`` beside it."""
    await pool.execute("VACUUM ANALYZE outbox")
    claimer = Claimer(pool)
    stream = asyncio.create_task(claimer.run())
    await asyncio.sleep(0.5)  # warm
    claimer.cycles.clear()
    await asyncio.sleep(2.0)
    alone, claimer.cycles = claimer.cycles, []
    started = time.perf_counter()
    result = await operation()
    seconds = time.perf_counter() - started
    claimer.running = False
    await stream
    return Beside(result, seconds, alone, claimer.cycles)


def cycles_text(cycles: list[float]) -> str:
    ordered = sorted(cycles)
    if not ordered:
        return "no cycle finished"
    return (
        f"p50 {percentile(ordered, 50):.1f} ms, p99 {percentile(ordered, 99):.1f} ms,"
        f" max {ordered[-1]:.1f} ms ({len(ordered)} cycles)"
    )


class BatchClock:
    """Times each batch of a batched operation from its ``on_batch`` callbacks."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.durations: list[float] = []

    def __call__(self, rows: int, total: int) -> None:
        now = time.perf_counter()
        self.durations.append((now - self.last) * 1000)
        self.last = now

    def longest(self) -> str:
        ordered = sorted(self.durations)
        return (
            f"{len(ordered)} batches, p50 {percentile(ordered, 50):.1f} ms,"
            f" longest {ordered[-1]:.1f} ms"
        )


async def fill(pool: Any, rows: int) -> None:
    started = time.perf_counter()
    for days in (40, 30, 20, 10):
        await pool.execute(FILL_PUBLISHED, timedelta(days=days), rows // 4)
    await pool.execute(FILL_DEAD, rows // 10)
    await pool.execute("VACUUM ANALYZE outbox")
    print(
        f"filled {rows // 4 * 4:,} published and {rows // 10:,} dead rows"
        f" in {time.perf_counter() - started:.1f} s"
    )


@asynccontextmanager
async def snapshot_held(url: str) -> AsyncIterator[None]:
    """Another session with an open repeatable-read snapshot, for the duration."""
    conn = await asyncpg.connect(libpq_dsn(url))
    try:
        transaction = conn.transaction(isolation="repeatable_read")
        await transaction.start()
        await conn.fetchval("SELECT count(*) FROM outbox WHERE id < 10")
        yield
        await transaction.rollback()
    finally:
        await conn.close()


async def read_costs(pool: Any, rows: int) -> None:
    """``outbox stats`` against one ``outbox top`` sample, on the full table."""
    stats_ms, top_ms = [], []
    for _ in range(3):
        started = time.perf_counter()
        await stats(pool)
        stats_ms.append((time.perf_counter() - started) * 1000)
    previous = await live_sample(pool)
    for _ in range(10):
        started = time.perf_counter()
        previous = await live_sample(pool, previous)
        top_ms.append((time.perf_counter() - started) * 1000)
    print(
        f"\nreads on {rows + rows // 10:,}+ rows: `outbox stats` median"
        f" {statistics.median(stats_ms):.1f} ms; one `outbox top` sample median"
        f" {statistics.median(top_ms):.2f} ms"
    )


def report(title: str, ran: Beside, batches: str) -> None:
    print(
        f"\n{title}: {ran.result:,} rows in {ran.seconds:.1f} s"
        f" = {ran.result / ran.seconds:,.0f} rows/s; {batches}\n{ran.stream()}"
    )


async def bench(url: str, rows: int, batch: int) -> None:
    pool = await create_pool(url, max_size=4, command_timeout=None)
    try:
        await fill(pool, rows)
        await read_costs(pool, rows)

        def batched_purge(older_than: timedelta, clock: BatchClock) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                clock.last = time.perf_counter()
                return await purge(
                    pool,
                    PurgeTarget.PUBLISHED,
                    older_than=older_than,
                    batch_size=batch,
                    on_batch=clock,
                )

            return run

        clock = BatchClock()
        ran = await beside_stream(pool, batched_purge(timedelta(days=35), clock))
        report(f"`outbox purge published` (batch {batch})", ran, clock.longest())

        clock = BatchClock()
        async with snapshot_held(url):
            ran = await beside_stream(pool, batched_purge(timedelta(days=25), clock))
        report("the same, a snapshot held elsewhere", ran, clock.longest())

        async def uncursored() -> int:
            clock.last = time.perf_counter()
            total = 0
            while True:
                status: str = await pool.execute(UNCURSORED_PURGE, batch)
                deleted = int(status.split()[-1])
                total += deleted
                clock(deleted, total)
                if deleted < batch:
                    return total

        clock = BatchClock()
        async with snapshot_held(url):
            ran = await beside_stream(pool, uncursored)
        report("uncursored batches, a snapshot held", ran, clock.longest())

        async def plain_delete() -> int:
            async with pool.acquire() as conn:
                status: str = await conn.execute(PLAIN_DELETE)
                return int(status.split()[-1])

        ran = await beside_stream(pool, plain_delete)
        report("one plain DELETE", ran, f"one transaction of {ran.seconds * 1000:,.0f} ms")

        clock = BatchClock()

        async def batched_retry() -> int:
            clock.last = time.perf_counter()
            result = await retry_dead(pool, DeadFilter(), batch_size=batch, on_batch=clock)
            return result.retried

        ran = await beside_stream(pool, batched_retry)
        report(f"`outbox dead retry --all` (batch {batch})", ran, clock.longest())
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="published rows (1000000)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch (1000)")
    args = parser.parse_args()
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    run_with_scratch_database(lambda url: bench(url, args.rows, args.batch))


if __name__ == "__main__":
    main()
