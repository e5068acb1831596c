"""Claim latency with a large backlog of another domain, against a naive filtered claim.

    python bench/claim_latency.py [--rows 1000000] [--repeat 50]

Uses DATABASE_URL if it answers, else a throwaway local PostgreSQL. Creates a scratch
database, fills it, and times claims of 100 rows, each in a transaction that is rolled back
so every claim sees the same backlog. "naive" is the single-statement claim of the source
system: ``type LIKE 'prefix%'`` / ``NOT LIKE`` on the generic (next_attempt_at, id) order,
returning the same columns. Both go through SQLAlchemy, so the difference is the plan.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from scratch import run_with_scratch_database
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from outbox import async_database_url, claim_batch

NAIVE = text(
    """
    WITH candidates AS (
        SELECT id FROM outbox
        WHERE status = 'pending' AND next_attempt_at <= now()
          AND (CAST(:include AS text) IS NULL OR type LIKE :include)
          AND (CAST(:exclude AS text) IS NULL OR type NOT LIKE :exclude)
        ORDER BY next_attempt_at, id
        LIMIT 100
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox SET status = 'in_progress', attempts = attempts + 1,
        locked_by = 'bench', locked_until = now() + interval '30 seconds'
    FROM candidates WHERE outbox.id = candidates.id
    RETURNING outbox.id, outbox.type, outbox.key, outbox.payload, outbox.attempts,
        outbox.created_at, outbox.next_attempt_at, outbox.locked_by, outbox.locked_until,
        outbox.error
    """
)


async def fill(engine: AsyncEngine, backlog_type: str, backlog: int, other_type: str) -> None:
    """``backlog`` old rows of one type, then 1,000 younger rows of another."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox"))
        await conn.execute(
            text(
                "INSERT INTO outbox (type, payload, next_attempt_at)"
                " SELECT :t, '{}', now() - interval '1 hour' FROM generate_series(1, :n)"
            ),
            {"t": backlog_type, "n": backlog},
        )
        await conn.execute(
            text(
                "INSERT INTO outbox (type, payload) SELECT :t, '{}' FROM generate_series(1, 1000)"
            ),
            {"t": other_type},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE outbox"))


async def timed(engine: AsyncEngine, repeat: int, claim: object) -> list[float]:
    samples = []
    for _ in range(repeat):
        async with engine.connect() as conn:
            started = time.perf_counter()
            count = await claim(conn)  # type: ignore[operator]
            samples.append((time.perf_counter() - started) * 1000)
            await conn.rollback()
        assert count == 100, count
    return samples


def line(label: str, samples: list[float]) -> str:
    p50 = statistics.median(samples)
    p95 = sorted(samples)[int(len(samples) * 0.95) - 1]
    return f"  {label:<30} p50 {p50:8.2f} ms   p95 {p95:8.2f} ms"


async def scenario(
    engine: AsyncEngine, title: str, repeat: int, include: str | None, exclude: str | None
) -> None:
    async def ours(conn: AsyncConnection) -> int:
        claimed = await claim_batch(
            conn,
            limit=100,
            lock_seconds=30,
            worker_id="bench",
            include_type_prefix=include and include.rstrip("%"),
            exclude_type_prefix=exclude and exclude.rstrip("%"),
        )
        return len(claimed)

    async def naive(conn: AsyncConnection) -> int:
        result = await conn.execute(NAIVE, {"include": include, "exclude": exclude})
        return len(result.all())

    async def unfiltered(conn: AsyncConnection) -> int:
        claimed = await claim_batch(conn, limit=100, lock_seconds=30, worker_id="bench")
        return len(claimed)

    print(title)
    for label, claim in (
        ("naive LIKE filter", naive),
        ("outbox.claim_batch", ours),
        ("outbox.claim_batch, no filter", unfiltered),
    ):
        print(line(label, await timed(engine, repeat, claim)))


async def main(url: str, rows: int, repeat: int) -> None:
    engine = create_async_engine(async_database_url(url))
    try:
        await fill(engine, "message.created", rows, "document.preprocess.v1")
        await scenario(
            engine,
            f"document claim (include 'document.') behind {rows:,} older chat rows:",
            repeat,
            "document.%",
            None,
        )
        await fill(engine, "document.preprocess.v1", rows, "message.created")
        await scenario(
            engine,
            f"chat claim (exclude 'document.') behind {rows:,} older document rows:",
            repeat,
            None,
            "document.%",
        )
        await fill(engine, "message.created", rows, "room.updated")
        await scenario(
            engine,
            f"chat claim (exclude 'document.') on its own {rows:,}-row backlog:",
            repeat,
            None,
            "document.%",
        )
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    run_with_scratch_database(lambda url: main(url, args.rows, args.repeat))
